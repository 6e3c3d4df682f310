"""Who speaks, when a shot holds several faces and the client sent no speaker data: active speaker detection.

Each face's mouth opening (from its landmarks) is followed over a window around the frame, from two seconds before
it to the processor's look-ahead after it, inside one shot. When the video has a soundtrack with speech-like level
changes, the speaker is the face whose opening rises and falls with the opening that speech implies: the shipped
lip-shape model (the one that drives the default re-drawn mouth, speech in, mouth opening out) is run on the
soundtrack itself, and each face's opening is correlated with its prediction (Pearson r). How much a mouth moves
counts beside it: a listener's mouth is mostly still. Without a soundtrack, or when it is silent or steady
(music), the face whose mouth moves most is the speaker. The choice changes only when another face has scored
clearly higher for a few frames in a row (hysteresis), so the re-drawn face does not flicker between two people
(docs/behaviour.md#who-is-re-drawn).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from lipsync_service.core.mel import MelStream
from lipsync_service.core.ort_session import cpu_session
from lipsync_service.media.soundtrack import Soundtrack
from lipsync_service.media.types import SoundtrackLevels
from lipsync_service.settings import DEFAULT_MODEL_REPOSITORY

# The round-4 lip-shape model (speech window -> mouth opening and width), shipped beside the default: its opening
# follows the speech's loudness, as an on-screen talker's mouth does on average, and the scores below were set
# with it. The round-5 default's opening is more phonetic and correlated less with a talker's mouth in the first
# second of a shot (the smaller talker of test_hard_footage lost its first 17 frames to the listener).
SPEECH_MODEL = DEFAULT_MODEL_REPOSITORY / "lip_shape_round4" / "1" / "model.onnx"
# Window around the frame (seconds before it); the look-ahead after it is what the caller has read.
WINDOW_PAST_S = 2.0
# Fewest frames with a readable mouth in the window for a face to be judged.
MIN_FRAMES = 8
# A soundtrack counts as speech in a window when its level varies at least this much (dB, std) and peaks above
# PEAK_DB; steady music or silence tells nothing about whose mouth follows it.
SPEECH_SPREAD_DB = 3.0
PEAK_DB = -50.0
# Audio lags tried (frames; audio after the mouth is positive).
LAGS = (0,)
# Weight of lip motion (relative to the most active face) beside the soundtrack correlation. Tuned on pairs of
# training clips (a speaker with its own soundtrack beside another face): 0.3 left listeners with still mouths
# chosen in 5 % of frames, 1.0 let a second moving mouth win too often; 0.6 between.
MOTION_WEIGHT = 0.6
# A challenger takes over once its score beats the current speaker's by MARGIN for SWITCH_S.
MARGIN = 0.1
SWITCH_S = 0.3


@dataclass(frozen=True)
class Choice:
    """The face re-drawn in a frame and why.

    Attributes:
        track_id: the tracker's id of the face.
        reason: "only face", "soundtrack sync" (its mouth follows the video's own audio), "lip motion" (its mouth
            moves most), or "largest face" (too little seen yet to judge).
        score: the correlation (soundtrack sync) or the lip motion it won with; None otherwise.
    """

    track_id: int
    reason: str
    score: float | None = None


@dataclass
class _Sample:
    index: int
    level: float | None
    expected: float | None
    openings: dict[int, float]


class ActiveSpeaker:
    """Chooses the speaking face per frame from the faces' lip motion and the video's own soundtrack."""

    def __init__(self, fps: float, soundtrack: SoundtrackLevels | None = None,
                 expected_opening: Callable[[int], float | None] | None = None) -> None:
        """Args:
            fps: the stream's frame rate.
            soundtrack: loudness of the input's own audio per frame, or None when it has none.
            expected_opening: the mouth opening the soundtrack's speech implies at a frame (None where unknown);
                without it the loudness itself is what mouths are correlated with.
        """
        self._soundtrack = soundtrack
        self._expected = expected_opening
        self._past = max(MIN_FRAMES, round(WINDOW_PAST_S * fps))
        self._switch = max(1, round(SWITCH_S * fps))
        self._shot: int | None = None
        self._samples: deque[_Sample] = deque()
        self._current: int | None = None
        self._challenger: int | None = None
        self._challenges = 0

    def observe(self, index: int, source_index: int, shot: int, openings: dict[int, float]) -> None:
        """Record the faces read in one frame (frames in order): track id -> mouth opening (gap over face height).

        A new shot forgets everything about the last one.
        """
        if shot != self._shot:
            self._shot = shot
            self._samples.clear()
            self._current = self._challenger = None
            self._challenges = 0
        level = self._soundtrack.level(source_index) if self._soundtrack is not None else None
        expected = self._expected(source_index) if self._expected is not None and level is not None else level
        self._samples.append(_Sample(index, level, expected, dict(openings)))

    def choose(self, index: int, candidates: Sequence[tuple[int, float]]) -> Choice | None:
        """The speaking face of frame `index` among `candidates` (track id, face size), or None when there are none.

        Call for frames in order, after `observe` has seen the frames up to the look-ahead.
        """
        if not candidates:
            return None
        while self._samples and self._samples[0].index < index - self._past:
            self._samples.popleft()
        ids = [track for track, _ in candidates]
        if len(ids) == 1:
            self._current, self._challenges = ids[0], 0
            return Choice(ids[0], "only face")
        scores, reason = self._scores(ids)
        if not scores:
            largest = max(candidates, key=lambda c: c[1])[0]
            keep = self._current if self._current in ids else largest
            self._current = keep
            return Choice(keep, "largest face")
        best = max(scores, key=lambda t: scores[t])
        current = self._current
        if current not in scores:
            self._current, self._challenger, self._challenges = best, None, 0
        elif best != current and scores[best] > scores[current] + MARGIN:
            self._challenges = self._challenges + 1 if self._challenger == best else 1
            self._challenger = best
            if self._challenges >= self._switch:
                self._current, self._challenger, self._challenges = best, None, 0
        else:
            self._challenger, self._challenges = None, 0
        chosen = self._current
        assert chosen is not None
        return Choice(chosen, reason, round(scores[chosen], 3))

    def _scores(self, ids: Sequence[int]) -> tuple[dict[int, float], str]:
        """Each judgeable face's score over the window, and what it is based on."""
        samples = list(self._samples)
        levels = np.array([s.level if s.level is not None else np.nan for s in samples], np.float64)
        expected = np.array([s.expected if s.expected is not None else np.nan for s in samples], np.float64)
        heard = levels[np.isfinite(levels)]
        speech = len(heard) >= MIN_FRAMES and float(heard.std()) >= SPEECH_SPREAD_DB and float(heard.max()) >= PEAK_DB
        motion: dict[int, float] = {}
        sync: dict[int, float] = {}
        for track in ids:
            series = np.array([s.openings.get(track, np.nan) for s in samples], np.float64)
            seen = np.isfinite(series)
            if int(seen.sum()) < MIN_FRAMES:
                continue
            motion[track] = float(series[seen].std())
            if speech:
                sync[track] = max(_lagged_r(series, expected, lag) for lag in LAGS)
        if not motion:
            return {}, ""
        top = max(motion.values())
        relative = {t: (m / top if top > 0 else 0.0) for t, m in motion.items()}
        if speech:
            return {t: sync[t] + MOTION_WEIGHT * relative[t] for t in motion}, "soundtrack sync"
        return relative, "lip motion"


def _lagged_r(opening: np.ndarray, level: np.ndarray, lag: int) -> float:
    """Pearson r of opening[t] with level[t + lag] over frames where both are known (0 when undefined)."""
    if lag > 0:
        a, b = opening[:-lag], level[lag:]
    elif lag < 0:
        a, b = opening[-lag:], level[:lag]
    else:
        a, b = opening, level
    both = np.isfinite(a) & np.isfinite(b)
    if int(both.sum()) < MIN_FRAMES:
        return 0.0
    x, y = a[both], b[both]
    sx, sy = float(x.std()), float(y.std())
    if sx < 1e-9 or sy < 1e-9:
        return 0.0
    return float(((x - x.mean()) * (y - y.mean())).mean() / (sx * sy))


class SpeechMouth:
    """The mouth opening the soundtrack's speech implies, per frame: the shipped lip-shape model run on it.

    The model maps an 80 x 16 mel window to (opening, width) in a speaker's own standard deviations; only the
    opening is used. It runs on ONNX Runtime whatever backend serves the re-drawn mouth (a Triton server, or an
    imported RGB generator that predicts no shape).
    """

    def __init__(self, soundtrack: Soundtrack, fps: Fraction, model_path: Path = SPEECH_MODEL) -> None:
        """Args:
            soundtrack: the input's own audio.
            fps: the output frame rate.
            model_path: the lip-shape ONNX file.

        Raises:
            InternalError: the model cannot be loaded (a broken installation).
        """
        self._soundtrack = soundtrack
        self._mel = MelStream(soundtrack, fps)
        self._session = cpu_session(model_path, 1, "speech-to-mouth model")
        self._input = self._session.get_inputs()[0].name
        self._last = -1

    def __call__(self, index: int) -> float | None:
        """The expected opening at output frame `index`; None before the soundtrack reaches it, or for a frame
        earlier than one already asked for (a replayed video tail)."""
        track = self._soundtrack
        if index <= self._last:
            return None
        track.wait_for(self._mel.needed_until_s(index))
        if not track.ended and track.available_s < self._mel.needed_until_s(index):
            return None
        self._last = index
        window = self._mel.window(index)
        track.release_before(max(0.0, self._mel.needed_until_s(index) - 1.0))
        out = self._session.run(None, {self._input: window[None, None]})[0]
        return float(out[0, 0])
