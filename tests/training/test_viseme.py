"""Phone labels of the training speech and the viseme heads: targets on known phones, labels of a GRID clip where
its words are, the phone pass done a few words at a time, the ensemble learning closure / tuck / round from the mel,
the 5-column `lip_shape` ONNX (calibrated probabilities), and both training verbs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lipsync_models.training import phone_labels as pl
from lipsync_service.errors import Unavailable
from lipsync_service.evaluation import load_speech, write_wav
from lipsync_service.evaluation import phones as ph
from lipsync_service.evaluation.phones import Phone, PhoneAlignment, Word


def _needs_pocketsphinx() -> None:
    try:
        ph._pocketsphinx()
    except Unavailable as exc:
        pytest.skip(str(exc))


def _alignment() -> PhoneAlignment:
    """"map two" spoken from 0.1 s, then "five" that does not fit the audio, and a breath."""
    phones = [Phone("SIL", 0.0, 0.1, "<sil>"), Phone("M", 0.1, 0.2, "map"), Phone("AE", 0.2, 0.3, "map"),
              Phone("P", 0.3, 0.4, "map"), Phone("T", 0.4, 0.45, "two"), Phone("UW", 0.45, 0.6, "two"),
              Phone("+BREATH+", 0.6, 0.7, "<sil>"), Phone("F", 0.7, 0.8, "five"), Phone("AY", 0.8, 0.9, "five"),
              Phone("V", 0.9, 1.0, "five")]
    words = [Word("map", 0.1, 0.4, -0.2), Word("two", 0.4, 0.6, -1.0), Word("five", 0.7, 1.0, -3.5)]
    return PhoneAlignment("transcript", "map two five", phones, words, 2 / 3)


def test_viseme_targets_of_known_phones() -> None:
    times = np.array([0.05, 0.15, 0.25, 0.35, 0.42, 0.5, 0.65, 0.75, 0.95, 1.2])
    ids = pl.phone_ids(_alignment(), times)
    assert pl.phone_names(ids) == ["SIL", "M", "AE", "P", "T", "UW", None, None, None, None]
    targets = pl.viseme_targets(ids)
    assert pl.VISEME_HEADS == ("closure", "tuck", "round")
    np.testing.assert_array_equal(targets[:6], [[0, 0, 0], [1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 1]])
    assert np.isnan(targets[6:]).all()  # a filler, a word that does not fit, past the speech
    # f / v and the other rounded sounds, had "five" fitted.
    named = np.array([pl.PHONE_INDEX[p] for p in ("F", "V", "B", "OW", "W", "OY", "IY", "N")])
    np.testing.assert_array_equal(pl.viseme_targets(named), [[0, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1],
                                                             [0, 0, 1], [0, 0, 1], [0, 0, 0], [0, 0, 0]])


def test_window_times_and_speech_windows_line_up() -> None:
    mel = np.arange(80 * 40, dtype=np.float32).reshape(80, 40)
    windows = pl.speech_windows(mel)
    assert windows.shape == (25, 80, 16)
    np.testing.assert_array_equal(windows[7], mel[:, 7:23])
    # A video frame's centre lies 20-32 ms after its window's first mel frame at 25 fps; a speech-only window's
    # label is read in that span.
    assert 0.020 <= pl.window_times(1)[0] <= 0.0325
    frames = pl.frame_times(3, 25)
    np.testing.assert_allclose(frames, [0.02, 0.06, 0.10])


def test_quiet_speech_is_brought_to_the_training_level() -> None:
    t = np.arange(16000) / 16000
    quiet = (0.003 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    louder = pl.level_normalised(quiet)
    frames = louder[:16000].reshape(-1, 160).astype(np.float64)
    assert np.percentile(10 * np.log10((frames**2).mean(axis=1)), 95) == pytest.approx(pl.TARGET_DBFS, abs=0.5)
    clipped = pl.level_normalised(np.r_[np.zeros(15840, np.float32), np.full(160, 0.5, np.float32)])
    assert np.abs(clipped).max() == pytest.approx(0.99)  # a gain that would clip is held back


def test_grid_clip_labels_close_tuck_and_round_inside_their_words(media) -> None:
    _needs_pocketsphinx()
    clip = "lipnet_grid_bbaf2n"  # bin blue at f two now
    speech = load_speech(media(f"train/{clip}.mpg"))
    frames = 75
    labelled = pl.label_speech(clip, speech, pl.frame_times(frames, 25), pl.grid_transcript(clip))
    assert labelled.summary["problem"] is None and labelled.summary["known_share"] > 0.75
    alignment = ph.align(speech, pl.grid_transcript(clip))
    word_at = {w.word: (w.start, w.end) for w in alignment.words}
    targets = pl.viseme_targets(labelled.ids)
    centres = pl.frame_times(frames, 25)

    def inside(column: int, words: tuple[str, ...]) -> bool:
        hits = centres[targets[:, column] == 1]
        return len(hits) > 0 and all(any(word_at[w][0] <= t < word_at[w][1] for w in words) for t in hits)

    assert inside(0, ("bin", "blue"))  # B
    assert inside(1, ("f",))  # EH F
    assert inside(2, ("two",))  # T UW


def test_the_phone_pass_a_few_words_at_a_time_matches_the_whole_pass(media) -> None:
    """The fallback for utterances whose whole phone pass fails gives the phones the whole pass gives."""
    _needs_pocketsphinx()
    clip = "lipnet_grid_lbax4n"
    speech = load_speech(media(f"train/{clip}.mpg"))
    text = pl.grid_transcript(clip)
    whole = ph.align(speech, text)
    decoder = ph._decoder(lm=None)
    decoder.set_align_text(text)
    ph._decode(decoder, ph._pcm(speech))
    segments = [(s.word, s.start_frame, s.end_frame, 0.0) for s in decoder.seg()]
    pieces = ph._phones_by_piece(ph._pcm(speech), segments)
    assert pieces is not None
    spoken = [p for p in whole.phones if p.name != "SIL"]
    again = [p for p in pieces if p.name != "SIL"]
    assert [p.name for p in again] == [p.name for p in spoken]
    assert max(abs(a.start - b.start) for a, b in zip(again, spoken)) <= 0.05


torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
from lipsync_models.training import viseme as vm  # noqa: E402
from lipsync_models.training.viseme_run import viseme_report  # noqa: E402
from lipsync_service.cli import main  # noqa: E402


def synthetic_visemes(n: int, seed: int = 0):
    """Windows whose bands carry the answer: a loudness (opening), a second cue (width), and three rare events
    each marked by energy in its own band (closure 8 %, tuck 5 %, round 10 % of windows)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.3, (n, 80, 16)).astype(np.float32) + rng.normal(0, 0.3, (n, 1, 1)).astype(np.float32)
    loud = rng.uniform(0, 1, n).astype(np.float32)
    cue = rng.uniform(0, 1, n).astype(np.float32)
    x[:, :20] += 2 * loud[:, None, None]
    x[:, 20:35] += 2 * cue[:, None, None]
    events = np.stack([rng.random(n) < r for r in (0.08, 0.05, 0.10)], axis=1)
    for c, band in enumerate((slice(40, 50), slice(55, 65), slice(68, 78))):
        x[events[:, c], band, 2:6] += 2.0
    shape = np.stack([(loud - loud.mean()) / loud.std(), (cue - cue.mean()) / cue.std()], axis=1).astype(np.float32)
    return x, shape, events.astype(np.float32)


def test_ensemble_learns_the_heads_and_exports_five_calibrated_columns(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from lipsync_service.evaluation.visemes import auc
    from lipsync_service.inference.onnxruntime import OnnxRuntimeBackend

    x, shape, events = synthetic_visemes(2500)
    speech_x, _, speech_events = synthetic_visemes(2000, seed=1)
    recipe = vm.Recipe(members=2, steps=120, hidden=32, pos_weight=(4.0, 4.0, 2.0))
    net = vm.train_viseme(vm.TrainingSet(x[:2000], shape[:2000], events[:2000]),
                          vm.TrainingSet(speech_x, np.full((2000, 2), np.nan, np.float32), speech_events), recipe)
    pred = vm.predict(net, x[2000:], recipe.pos_weight)
    assert pred.shape == (500, 5)
    assert vm.count_parameters(net) < 1_000_000
    assert np.corrcoef(pred[:, 0], shape[2000:, 0])[0, 1] > 0.8
    for c in range(3):
        truth = events[2000:, c] > 0
        assert auc(pred[truth, 2 + c], pred[~truth, 2 + c]) > 0.95
        # Calibrated: the weight on the positives is taken off again, so the mean probability is near the rate.
        assert abs(pred[:, 2 + c].mean() - truth.mean()) < 0.05

    out = vm.export_viseme(net, tmp_path / "lip_shape" / "1" / "model.onnx", [3.0, 2.5], recipe.pos_weight, recipe)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["lipsync_contract"] == "lip_shape" and "lip_shape [B,5]" in meta["description"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].shape[1:] == [5]
    served = session.run(None, {"mel": x[2000:, None]})[0]
    np.testing.assert_allclose(served[:, :2], np.clip(pred[:, :2] * [3.0, 2.5], -3, 3), atol=1e-3)
    np.testing.assert_allclose(served[:, 2:], pred[:, 2:], atol=1e-3)
    assert served[:, 2:].min() >= 0 and served[:, 2:].max() <= 1
    backend = OnnxRuntimeBackend(out)
    assert (backend.spec.shape_columns, backend.infer(None, x[:3, None]).shape) == (5, (3, 5))
    backend.close()
    vm.save_viseme(net, tmp_path / "v.pt", recipe)
    again, loaded = vm.load_viseme(tmp_path / "v.pt")
    assert loaded == recipe
    np.testing.assert_allclose(vm.predict(again, x[:5], recipe.pos_weight), vm.predict(net, x[:5], recipe.pos_weight))
    torch.save({"kind": "shape_ensemble"}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a viseme ensemble"):
        vm.load_viseme(tmp_path / "x.pt")


def test_the_served_graph_takes_the_positive_weight_off_the_logits() -> None:
    class Constant(torch.nn.Module):
        def forward(self, mel):
            return torch.tensor([[0.0, 0.0, float(np.log(4.0)), float(np.log(2.0)), 0.0]]).expand(len(mel), 5)

    served = vm.build_served(Constant(), [3.0, 2.5], (4.0, 2.0, 1.0))
    got = served(torch.zeros(2, 1, 80, 16)).numpy()
    np.testing.assert_allclose(got, [[0, 0, 0.5, 0.5, 0.5]] * 2, atol=1e-6)


def test_report_gives_auc_and_mean_probabilities_per_phone_group(capsys) -> None:
    ids = np.array([pl.PHONE_INDEX[p] for p in ("P", "T", "F", "UW", "IY", "SIL", "M", "N")] + [pl.UNKNOWN])
    pred = np.zeros((len(ids), 5))
    pred[:, 2] = [0.9, 0.1, 0.2, 0.1, 0.1, 0.05, 0.8, 0.3, 0.99]  # closure high at p and m
    row = viseme_report("x", pred, ids)
    assert row["auc_closure"] == 1.0 and row["positives_closure"] == 2 and row["frames"] == 8
    assert row["closure at p b m"] == pytest.approx(0.85) and row["closure at t d n"] == pytest.approx(0.2)
    assert row["auc_tuck"] == 0.5  # a constant head is at chance
    # Against t and n alone (0.1, 0.3): p and m (0.9, 0.8) are above both; F at 0.2 is not a hard negative.
    assert row["auc_closure_hard"] == 1.0 and row["auc_tuck_hard"] is None
    pred[7, 2] = 0.85  # an n above the m
    assert viseme_report("x", pred, ids)["auc_closure_hard"] == pytest.approx(0.75)
    assert "visemes x: 8 labelled frames; AUC closure 1.000" in capsys.readouterr().out


def test_train_phones_and_visemes_verbs_end_to_end(tmp_path: Path, media, capsys) -> None:
    """`train phones` labels a cache's clips (a GRID clip) and speech-only files (aligned when English and
    transcribed, kept unaligned when German); `train visemes` trains on them and writes a 5-column model."""
    _needs_pocketsphinx()
    import onnxruntime as ort

    from lipsync_models.dataset import write_clip
    from lipsync_service.core.mel import melspectrogram, window_start

    from .conftest import FPS

    cache, labels = tmp_path / "cache", {}
    grid = load_speech(media("train/lipnet_grid_bbaf2n.mpg"))
    for n, (name, split) in enumerate([("lipnet_grid_bbaf2n", "train"), ("other", "train"), ("held", "val")]):
        speech = grid if n == 0 else np.roll(grid, 4000 * n)
        wav = tmp_path / f"{name}.wav"
        write_wav(wav, speech)
        frames = int(len(speech) / 16000 * 25)
        starts = np.array([window_start(i, FPS) for i in range(frames)])
        faces = np.zeros((frames, 8, 8, 3), np.uint8)
        write_clip(cache, name, f"id{n}", split, faces, np.ones(frames, bool), melspectrogram(speech), starts, FPS,
                   extra={"audio": str(wav), "video": str(wav)})
        env = np.abs(speech[: frames * 640]).reshape(frames, 640).mean(axis=1)
        labels[name] = np.stack([env, 0.4 - 0.1 * env], axis=1).astype(np.float32)
    np.savez(tmp_path / "labels.npz", **labels)
    folder = tmp_path / "speech"
    folder.mkdir()
    write_wav(folder / "en_grid_one.wav", grid)
    write_wav(folder / "de_grid_one.wav", grid)
    write_wav(folder / "en_fleurs_x.wav", np.roll(grid, 8000))
    (folder / "transcripts.txt").write_text("en_grid_one|bin blue at f two now\nde_grid_one|bin blau\n"
                                            "en_fleurs_x|bin blue at f two now\n")
    phones = tmp_path / "phones.npz"
    assert main(["train", "phones", str(phones), "--cache", str(cache), "--speech", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "phones lipnet_grid_bbaf2n: transcript, 6 words" in printed
    assert "phones de_grid_one: none" in printed and "not aligned: language 'de'" in printed
    clips, speech_only = pl.read_labels(phones)
    assert set(clips) == {"lipnet_grid_bbaf2n", "other", "held"} and clips["other"].summary["source"] == "recognised"
    assert (clips["lipnet_grid_bbaf2n"].ids >= 0).mean() > 0.75
    assert speech_only["en_grid_one"].mel is not None and speech_only["en_grid_one"].language == "en"
    assert (speech_only["de_grid_one"].ids == pl.UNKNOWN).all()
    # Resumable: run again, nothing is aligned a second time.
    assert main(["train", "phones", str(phones), "--cache", str(cache), "--speech", str(folder)]) == 0
    assert "phones " not in capsys.readouterr().out

    out = tmp_path / "run"
    assert main(["train", "visemes", str(cache), str(tmp_path / "labels.npz"), str(phones), str(out), "--steps", "20",
                 "--members", "2"]) == 0
    printed = capsys.readouterr().out
    assert "offset lipnet_grid_bbaf2n" in printed and "held-out held: r opening" in printed
    assert "visemes held-out en (1 files)" in printed and "visemes de (1 files)" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["speech_train_files"] == ["en_grid_one"] and report["speech_held_out_files"] == ["en_fleurs_x"]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"mel": np.zeros((3, 1, 80, 16), np.float32)})[0]
    assert got.shape == (3, 5) and (got[:, 2:] > 0).all() and (got[:, 2:] < 1).all()
