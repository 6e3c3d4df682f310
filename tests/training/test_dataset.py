"""Dataset builder: identities and split, cache writing, resumable prepare on real clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lipsync_models.dataset import choose_split, prepare, read_identities
from lipsync_models.training.data import WindowSampler, load_clips

NOTICE = """# clips

| file | duration (s) | identity | what |
|---|---|---|---|
| a.mpg | 2.98 | id01 | speaker one |
| b.mpg | 2.98 | id02 | speaker two |
| a.wav | 2.98 | – | not a clip |
"""


def test_identities_from_notice_table(tmp_path: Path) -> None:
    (tmp_path / "NOTICE.md").write_text(NOTICE)
    assert read_identities(tmp_path) == {"a.mpg": "id01", "b.mpg": "id02"}
    assert read_identities(tmp_path / "missing") == {}


def test_split_is_by_identity() -> None:
    assert choose_split(["x", "y", "x", "z"], ["y"]) == {"x": "train", "y": "val", "z": "train"}
    with pytest.raises(ValueError, match="not found"):
        choose_split(["x", "y"], ["q"])
    with pytest.raises(ValueError, match="at least one"):
        choose_split(["x"], ["x"])


def test_prepare_real_clips_split_and_resume(media, tmp_path: Path) -> None:
    src = tmp_path / "videos"
    src.mkdir()
    # Links, not copies: the media stays where it is.
    (src / "a.mpg").symlink_to(media("train/lipnet_grid_bbaf2n.mpg"))
    (src / "b.mpg").symlink_to(media("train/lipnet_grid_brbk7n.mpg"))
    (src / "NOTICE.md").write_text(NOTICE)
    cache = tmp_path / "cache"
    lines: list[str] = []
    index = prepare([src], cache, val_identities=["id02"], face_size=96, max_frames=30, progress=lines.append)
    clips = {c["name"]: c for c in index["clips"]}
    assert clips["a"]["split"] == "train" and clips["b"]["split"] == "val"
    assert clips["a"]["frames"] == 30 and clips["a"]["valid_frames"] >= 28
    train = load_clips(cache, "train")
    assert len(train) == 1 and train[0].faces.shape == (30, 96, 96, 3)
    # 25 fps -> mel windows start every 3.2 mel frames; the speech covers the whole clip.
    assert train[0].window_starts[25] == 80 and train[0].mel.shape[0] == 80 and train[0].mel.shape[1] >= 230
    # A face crop: skin-toned centre, not the blue GRID backdrop.
    centre = train[0].faces[0, 40:60, 40:60].reshape(-1, 3).mean(0)
    assert centre[2] > centre[0]  # BGR: more red than blue
    batch = WindowSampler(train, 5).sample(np.random.default_rng(0), 3)
    assert batch.target.shape == (3, 5, 96, 96, 3) and batch.mel.shape == (3, 5, 80, 16)
    # A second run finds both clips cached and only relabels the split when asked.
    lines.clear()
    index = prepare([src], cache, val_identities=["id01"], face_size=96, max_frames=30, progress=lines.append)
    assert lines == ["a: cached", "b: cached"]
    assert {c["name"]: c["split"] for c in index["clips"]} == {"a": "val", "b": "train"}
