"""Visemes: does the mouth make the shape of the sound? Landmark tracks scored against the speech's phones.

Per video frame, from the independent landmark model (`landmark_env/landmarks.py`):

* opening: the inner-lip gap over the face height (the `opening` every other measure uses);
* width: the lip corners' distance (landmarks 61, 291);
* lower-lip drop: the distance from the nose tip (1) to the lower lip's outer midpoint (17); it shrinks when
  the lower lip is raised to the upper teeth;
* jaw: the distance from the chin (152) to the nose bridge (6);

width, lower-lip drop and jaw in units of the outer eye corners' distance (33, 263), which neither mouth nor
jaw moves. A frame takes the phone at its centre ((k + 0.5) / fps seconds into the speech).

Measures (AUC: the probability that a frame of the first set scores higher than a frame of the second, ties
counting one half; 0.5 is chance, 1 a perfect split):

* bilabial contrast: AUC of the opening, t d n s z l th dh over p b m. Lips close 40-120 ms before a plosive's
  release and a lip-sync model may lead or lag by a frame, so both sets are scored by the smallest opening
  within +-`TOLERANCE` frames of each frame (the same window on both sides keeps chance at 0.5; the price is
  that a t/d/n frame within two frames of a p/b/m closure shares it);
* closure rate: share of p/b/m phones whose smallest opening, over the phone's frames and `TOLERANCE` frames
  either side, falls below the 20th percentile of the openings during speech (any phone but silence);
* labiodental contrast: AUC of the lower-lip drop, other consonants over f v (other: every consonant but
  p b m f v w), each frame scored by its smallest drop within +-`TOLERANCE` frames;
* rounding contrast: AUC of the width, iy ih ey eh ae over uw uh ow w (frame by frame, no window: vowels last);
* jaw coupling: Pearson r of the opening with the jaw over the frames of speech.

A measure with too few frames or phones to score is None, with the reason in `not_measured`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lipsync_service.evaluation.phones import NOT_PHONES, Phone
from lipsync_service.evaluation.sync import pearson

BILABIALS = frozenset({"P", "B", "M"})
ALVEOLARS = frozenset({"T", "D", "N", "S", "Z", "L", "TH", "DH"})
LABIODENTALS = frozenset({"F", "V"})
SPREAD_VOWELS = frozenset({"IY", "IH", "EY", "EH", "AE"})
ROUNDED = frozenset({"UW", "UH", "OW", "W"})
CONSONANTS = frozenset({"B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG", "P", "R", "S", "SH",
                        "T", "TH", "V", "W", "Y", "Z", "ZH"})
#: The consonants f/v are compared with: all but the lip consonants.
OTHER_CONSONANTS = CONSONANTS - BILABIALS - LABIODENTALS - {"W"}
#: Frames either side in which the smallest opening (or lower-lip drop) counts for a frame.
TOLERANCE = 1
#: "Closed" for the closure rate: under this percentile of the openings during speech.
CLOSED_PERCENTILE = 20.0
#: Fewest frames in each set of an AUC, phones for the closure rate, frames for the jaw coupling.
MIN_FRAMES = 5
MIN_PHONES = 3
MIN_SPEECH_FRAMES = 20

# Indices into landmarks.py's outer lip contour (it starts at the left corner, 61).
LIP_CORNERS = (0, 10)  # 61, 291
LOWER_LIP_MID = 5  # 17


@dataclass
class VisemeScores:
    """How the mouth's shapes follow the phones of the speech heard with it.

    Attributes:
        bilabial_contrast: P(opening at t d n s z l th dh > at p b m), +-TOLERANCE frames.
        closure_rate: share of p/b/m phones closed (under the 20th percentile of openings in speech).
        labiodental_contrast: P(lower-lip drop at other consonants > at f v), +-TOLERANCE frames.
        rounding_contrast: P(width at iy ih ey eh ae > at uw uh ow w).
        jaw_coupling: Pearson r of the opening with the chin-to-nose-bridge distance during speech.
        counts: frames (or phones) each measure used.
        not_measured: measure name -> why it is None.
    """

    bilabial_contrast: float | None = None
    closure_rate: float | None = None
    labiodental_contrast: float | None = None
    rounding_contrast: float | None = None
    jaw_coupling: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    not_measured: dict[str, str] = field(default_factory=dict)


MEASURES = ("bilabial_contrast", "closure_rate", "labiodental_contrast", "rounding_contrast", "jaw_coupling")


def auc(high: Sequence[float] | np.ndarray, low: Sequence[float] | np.ndarray) -> float:
    """P(a value of `high` > a value of `low`), ties counting one half (the Mann-Whitney U over the pairs).

    Raises:
        ValueError: either set is empty.
    """
    h = np.sort(np.asarray(high, np.float64))
    lo = np.asarray(low, np.float64)
    if not h.size or not lo.size:
        raise ValueError("auc needs values in both sets")
    right = np.searchsorted(h, lo, side="right")
    left = np.searchsorted(h, lo, side="left")
    return float(((h.size - right).sum() + 0.5 * (right - left).sum()) / (h.size * lo.size))


def frame_phones(phones: Sequence[Phone], fps: float, frames: int) -> list[str | None]:
    """The phone at each video frame's centre (None: silence, a filler, or past the speech).

    Args:
        phones: the speech's phones in time order.
        fps: video frame rate.
        frames: number of frames.
    """
    out: list[str | None] = [None] * frames
    for p in phones:
        if p.name in NOT_PHONES:
            continue
        first = max(0, math.ceil(p.start * fps - 0.5))
        last = min(frames, math.ceil(p.end * fps - 0.5))  # centres in [start, end)
        for k in range(first, last):
            out[k] = p.name
    return out


def window_min(track: np.ndarray, reach: int = TOLERANCE) -> np.ndarray:
    """Each frame's smallest value within +-`reach` frames (NaN frames ignored; NaN where all are NaN)."""
    x = np.asarray(track, np.float64)
    out = x.copy()
    for shift in range(1, reach + 1):
        out[shift:] = np.fmin(out[shift:], x[:-shift])
        out[:-shift] = np.fmin(out[:-shift], x[shift:])
    return out


def _dist(a: Sequence[float], b: Sequence[float]) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])


def shape_tracks(marks: dict) -> dict[str, np.ndarray]:
    """Per-frame opening, width, lower-lip drop and jaw from `measure_landmarks` output (NaN: no face).

    Args:
        marks: {"opening": [...], "points": [{"lips", "nose", "chin", "bridge", "eyes"} | None, ...]}.

    Returns:
        {"opening", "width", "lip_drop", "jaw"}: float64 arrays, one value per frame.
    """
    opening = np.array([math.nan if v is None else v for v in marks["opening"]], np.float64)
    n = len(opening)
    width, drop, jaw = (np.full(n, math.nan) for _ in range(3))
    for k, pts in enumerate(marks["points"][:n]):
        if pts is None or "eyes" not in pts or "bridge" not in pts:
            continue
        unit = _dist(*pts["eyes"])
        if unit <= 0:
            continue
        lips = pts["lips"]
        width[k] = _dist(lips[LIP_CORNERS[0]], lips[LIP_CORNERS[1]]) / unit
        drop[k] = _dist(pts["nose"], lips[LOWER_LIP_MID]) / unit
        jaw[k] = _dist(pts["chin"], pts["bridge"]) / unit
    return {"opening": opening, "width": width, "lip_drop": drop, "jaw": jaw}


def _contrast(scores: VisemeScores, name: str, track: np.ndarray, labels: Sequence[str | None],
              high: frozenset[str], low: frozenset[str]) -> None:
    """Set the AUC of `track` on frames labelled `high` over frames labelled `low`, or say why not."""
    hi = np.array([v for v, p in zip(track, labels) if p in high and not math.isnan(v)])
    lo = np.array([v for v, p in zip(track, labels) if p in low and not math.isnan(v)])
    scores.counts[name] = int(hi.size + lo.size)
    if hi.size < MIN_FRAMES or lo.size < MIN_FRAMES:
        scores.not_measured[name] = (f"too few frames: {lo.size} of {'/'.join(sorted(low)).lower()} and {hi.size} "
                                     f"to compare with (needs {MIN_FRAMES} each)")
        return
    setattr(scores, name, auc(hi, lo))


def _closure_rate(scores: VisemeScores, opening: np.ndarray, labels: Sequence[str | None],
                  phones: Sequence[Phone], fps: float) -> None:
    speech = np.array([v for v, p in zip(opening, labels) if p is not None and not math.isnan(v)])
    n = len(opening)
    minima = []
    for p in phones:
        if p.name not in BILABIALS:
            continue
        first = max(0, math.ceil(p.start * fps - 0.5))
        last = min(n, math.ceil(p.end * fps - 0.5))
        if last <= first:  # a phone shorter than a frame: the frame it falls in
            first = min(n - 1, int((p.start + p.end) / 2 * fps))
            last = first + 1
        if first < 0 or first >= n:
            continue
        seg = opening[max(0, first - TOLERANCE):min(n, last + TOLERANCE)]
        if np.isnan(seg).all():
            continue
        minima.append(float(np.nanmin(seg)))
    scores.counts["closure_rate"] = len(minima)
    if len(minima) < MIN_PHONES or speech.size < MIN_SPEECH_FRAMES:
        scores.not_measured["closure_rate"] = (f"too few p/b/m phones with a face ({len(minima)}, needs "
                                               f"{MIN_PHONES}) or frames of speech ({speech.size}, needs "
                                               f"{MIN_SPEECH_FRAMES})")
        return
    level = float(np.percentile(speech, CLOSED_PERCENTILE))
    scores.closure_rate = float(np.mean(np.array(minima) < level))


def viseme_scores(marks: dict, phones: Sequence[Phone], fps: float) -> VisemeScores:
    """Every viseme measure of one video against the phones of the speech heard with it.

    Args:
        marks: `measure_landmarks` output for the video.
        phones: the speech's phones (`evaluation.phones.align`), times from the video's first frame.
        fps: video frame rate.

    Returns:
        the VisemeScores.
    """
    tracks = shape_tracks(marks)
    n = len(tracks["opening"])
    labels = frame_phones(phones, fps, n)
    scores = VisemeScores()
    _contrast(scores, "bilabial_contrast", window_min(tracks["opening"]), labels, ALVEOLARS, BILABIALS)
    _closure_rate(scores, tracks["opening"], labels, phones, fps)
    _contrast(scores, "labiodental_contrast", window_min(tracks["lip_drop"]), labels, OTHER_CONSONANTS,
              LABIODENTALS)
    _contrast(scores, "rounding_contrast", tracks["width"], labels, SPREAD_VOWELS, ROUNDED)
    ok = np.array([p is not None for p in labels]) & ~np.isnan(tracks["opening"]) & ~np.isnan(tracks["jaw"])
    scores.counts["jaw_coupling"] = int(ok.sum())
    if ok.sum() < MIN_SPEECH_FRAMES:
        scores.not_measured["jaw_coupling"] = f"too few frames of speech with a face ({int(ok.sum())}, needs " \
                                              f"{MIN_SPEECH_FRAMES})"
    else:
        scores.jaw_coupling = pearson(tracks["opening"][ok], tracks["jaw"][ok])
    return scores


def unmeasured(reason: str) -> VisemeScores:
    """Scores with every measure None for one reason (no phones to score against)."""
    return VisemeScores(not_measured=dict.fromkeys(MEASURES, reason))
