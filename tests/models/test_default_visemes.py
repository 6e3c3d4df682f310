"""The shipped default model hears the sounds the lips show: on held-out English speech (never trained or tuned on),
its closure column is higher on p/b/m frames, its tuck column on f/v and its round column on rounded vowels than on
the other speech frames. Phones from pocketsphinx's own recognition, as `lipsync-service eval` finds them."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from lipsync_models.training import phone_labels as pl
from lipsync_service.core.mel import melspectrogram, window_start
from lipsync_service.errors import Unavailable
from lipsync_service.evaluation import load_speech
from lipsync_service.evaluation import phones as ph
from lipsync_service.settings import DEFAULT_MODEL_REPOSITORY

FPS = 25
# The speech of the README's E3/E4 rows: no training or tuning choice was made on it.
HELD_OUT_SPEECH = ("speech_48k_28s.wav", "speech_16k_12s.wav", "speech_en_2.wav")


@pytest.fixture(scope="module")
def heard() -> tuple[np.ndarray, np.ndarray]:
    """(model rows [frames, 5], viseme targets [frames, 3]) of the held-out speech files at 25 fps."""
    try:
        ph._pocketsphinx()
    except Unavailable as exc:
        pytest.skip(str(exc))
    from tests.conftest import media_path

    session = ort.InferenceSession(str(DEFAULT_MODEL_REPOSITORY / "lipsync_generator" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    rows, targets = [], []
    for name in HELD_OUT_SPEECH:
        speech = load_speech(media_path(name))
        mel = melspectrogram(speech)
        frames = int(len(speech) / 16000 * FPS)
        starts = [min(window_start(i, FPS), mel.shape[1] - 16) for i in range(frames)]
        x = np.stack([mel[:, s : s + 16] for s in starts]).astype(np.float32)[:, None]
        rows.append(session.run(None, {"mel": x})[0])
        labelled = pl.label_speech(name, speech, pl.frame_times(frames, FPS), None)
        targets.append(pl.viseme_targets(labelled.ids))
    return np.concatenate(rows), np.concatenate(targets)


@pytest.mark.parametrize("column,head", [(2, "closure"), (3, "tuck"), (4, "round")])
def test_each_viseme_column_is_higher_on_its_own_sounds(heard, column, head) -> None:
    rows, targets = heard
    assert rows.shape[1] == 5 and np.isfinite(rows).all()
    assert ((rows[:, 2:] >= 0) & (rows[:, 2:] <= 1)).all()
    k = pl.VISEME_HEADS.index(head)
    on, off = rows[targets[:, k] == 1, column], rows[targets[:, k] == 0, column]
    assert len(on) >= 5 and len(off) >= 50
    assert on.mean() > 2.0 * off.mean(), (head, on.mean(), off.mean())
