"""Active speaker detection on known signals: the face whose mouth follows the soundtrack's speech wins, lip motion
decides without a soundtrack, the choice is steady, a new shot starts afresh; and the soundtrack's own reading."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from lipsync_service.core.active_speaker import ActiveSpeaker, SpeechMouth
from lipsync_service.media.soundtrack import Soundtrack
from tests import footage
from tests.conftest import media_path

FPS = 25.0


class Levels:
    """A soundtrack's loudness per frame (dB)."""

    def __init__(self, levels: np.ndarray) -> None:
        self.levels = levels

    def level(self, index: int) -> float | None:
        return float(self.levels[index]) if 0 <= index < len(self.levels) else None


def _speech_like(n: int, rng: np.random.Generator) -> np.ndarray:
    """A syllable-rate opening signal (about 4 per second) with noise."""
    t = np.arange(n) / FPS
    return 0.03 * np.clip(np.sin(2 * np.pi * 4.1 * t + rng.uniform(0, 6)) + 0.5 * rng.normal(size=n), -1, 2)


def _run(speaker: ActiveSpeaker, series: dict[int, np.ndarray], sizes: dict[int, float], lookahead: int = 12,
         shots: list[int] | None = None) -> list[int]:
    n = len(next(iter(series.values())))
    chosen = []
    for i in range(n + lookahead):
        if i < n:
            speaker.observe(i, i, shots[i] if shots else 0, {t: float(s[i]) for t, s in series.items()})
        j = i - lookahead
        if j >= 0:
            choice = speaker.choose(j, [(t, sizes[t]) for t in series])
            assert choice is not None
            chosen.append(choice.track_id)
    return chosen


def test_the_face_following_the_soundtrack_wins_over_a_larger_moving_one() -> None:
    rng = np.random.default_rng(0)
    talker = _speech_like(250, rng)
    other = _speech_like(250, rng)
    # Loudness follows the talker's mouth (with noise); the expected opening is what a speech model would predict.
    loud = -30 + 300 * talker + rng.normal(0, 1.5, 250)
    speaker = ActiveSpeaker(FPS, Levels(loud), expected_opening=lambda i: float(talker[i] + rng.normal(0, 0.01)))
    chosen = _run(speaker, {1: talker, 2: other}, {1: 100.0, 2: 200.0})
    assert np.mean(np.array(chosen) == 1) >= 0.9


def test_without_a_soundtrack_the_moving_mouth_wins_over_a_still_one() -> None:
    rng = np.random.default_rng(1)
    talker = _speech_like(200, rng)
    listener = 0.01 + 0.0005 * rng.normal(size=200)
    chosen = _run(ActiveSpeaker(FPS), {1: talker, 2: listener}, {1: 100.0, 2: 200.0})
    assert np.mean(np.array(chosen) == 1) >= 0.95


def test_the_choice_follows_a_change_of_speaker_without_flickering() -> None:
    rng = np.random.default_rng(2)
    a = np.concatenate([_speech_like(150, rng), 0.01 + 0.0005 * rng.normal(size=150)])
    b = np.concatenate([0.01 + 0.0005 * rng.normal(size=150), _speech_like(150, rng)])
    chosen = np.array(_run(ActiveSpeaker(FPS), {1: a, 2: b}, {1: 100.0, 2: 100.0}))
    assert np.mean(chosen[:140] == 1) >= 0.95 and np.mean(chosen[190:] == 2) >= 0.95
    switches = int(np.sum(chosen[1:] != chosen[:-1]))
    assert switches == 1


def test_a_new_shot_forgets_the_last_one_and_a_single_face_is_the_only_face() -> None:
    rng = np.random.default_rng(3)
    speaker = ActiveSpeaker(FPS)
    series = {1: _speech_like(60, rng), 2: 0.01 + 0.0005 * rng.normal(size=60)}
    _run(speaker, series, {1: 1.0, 2: 1.0}, lookahead=0)
    speaker.observe(60, 60, 1, {7: 0.02, 8: 0.02})
    choice = speaker.choose(60, [(7, 50.0), (8, 80.0)])
    assert choice is not None and choice.reason == "largest face" and choice.track_id == 8
    only = speaker.choose(61, [(9, 10.0)])
    assert only is not None and only.reason == "only face"


def _soundtrack_of(path, fps: Fraction) -> Soundtrack:
    track = Soundtrack(fps)
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.audio[0]):
            track.add(frame)
    track.finish()
    return track


def test_the_soundtrack_gives_a_level_per_frame_and_its_samples() -> None:
    path = media_path("talking_3.mp4")
    track = _soundtrack_of(path, Fraction(25))
    clip = footage.load(path, seconds=5.0)
    assert clip.audio is not None
    levels = [track.level(i) for i in range(100)]
    assert all(v is not None and -100 <= v < 0 for v in levels)
    # Loud where the audio is loud: the per-frame levels follow the clip's own (pre-emphasised) RMS envelope.
    emphasised = np.concatenate([[0.0], clip.audio[1:] - 0.97 * clip.audio[:-1]])
    rms = [20 * np.log10(np.sqrt(np.mean(emphasised[i * 640 : (i + 1) * 640] ** 2)) + 1e-9) for i in range(100)]
    assert np.corrcoef(levels, rms)[0, 1] > 0.9
    samples = track.read(1.0, 1.5)
    assert samples.shape == (8000,) and np.abs(samples).max() > 0
    track.release_before(2.0)
    assert np.abs(track.read(1.0, 1.5)).max() == 0  # let go


def test_the_soundtracks_speech_implies_its_own_speakers_mouth(tmp_path) -> None:
    """The lip-shape model run on a clip's own audio correlates with that clip's mouth far better than chance."""
    from lipsync_service.core.faces import FaceDetector
    from lipsync_service.core.landmarks import FaceLandmarker
    from lipsync_service.core.mouth import lip_ratios

    path = media_path("talking_3.mp4")
    mouth = SpeechMouth(_soundtrack_of(path, Fraction(25)), Fraction(25))
    clip = footage.load(path, seconds=5.0)
    detector, landmarker = FaceDetector(), FaceLandmarker()
    box = detector.detect_image(clip.frames[0])[0].box
    opening, expected = [], []
    for i, img in enumerate(clip.frames[:120]):
        mesh = landmarker.detect(img, box)
        value = mouth(i)
        if mesh is not None and value is not None:
            opening.append(lip_ratios(mesh.points)[0])
            expected.append(value)
    assert len(opening) > 100
    assert np.corrcoef(opening, expected)[0, 1] > 0.3
    assert mouth(5) is None  # a frame already passed (a replayed tail) is not measured again


@pytest.mark.parametrize("start", [0.0, 0.4])
def test_audio_that_starts_after_the_video_is_silent_before(start: float) -> None:
    track = Soundtrack(Fraction(25))
    tone = (0.3 * np.sin(np.arange(16000) * 2 * np.pi * 300 / 16000)).astype(np.float32)
    frame = av.AudioFrame.from_ndarray(tone[None], format="flt", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = 16000, int(start * 16000), Fraction(1, 16000)
    track.add(frame)
    track.finish()
    first_loud = next(i for i in range(40) if (track.level(i) or -100) > -40)
    assert first_loud == int(start * 25)
