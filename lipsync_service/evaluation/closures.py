"""Do the lips close where the speech stops for a moment?

Bilabial stops (p, b, m) close the lips completely while the voice is loud just before and after. In the
loudness envelope such a closure is a short dip: one to three frames far quieter than speech on both sides
(other stops, t d k g, make the same dip without closing the lips, so even real footage closes at only a
share of the dips). This module finds those dips in the speech and measures how often the mouth is closed at
them (within one frame), beside how often it is closed during loud speech anywhere. Real footage with its own
speech gives the reference share; the unchanged video with a foreign speech gives the chance level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# A frame is speech when it is at most this far under the clip's 95th percentile of loudness.
LOUD_BELOW_P95_DB = 15.0
# A dip is at least this much quieter than the quieter of the two loudest frames within DIP_REACH frames
# before and after it (so the voice is loud on both sides).
DIP_DEPTH_DB = 8.0
# Frames either side searched for the loud speech around a dip (3 frames at 25 fps: 120 ms).
DIP_REACH = 3
# "Closed": an opening below this share of the way from the video's 5th to its 95th percentile of opening.
CLOSED_SHARE = 0.2
# A dip counts as closed when the mouth is closed within this many frames of it.
TOLERANCE = 1


@dataclass
class ClosureScore:
    """How the mouth closes at the speech's short dips.

    Attributes:
        dips: short dips found in the speech (candidate stop closures).
        closed_at_dips: share of the dips with the mouth closed within TOLERANCE frames (None: no dip).
        closed_in_speech: share of loud speech frames with the mouth closed within TOLERANCE frames (how often
            it closes anyway: the chance level of closed_at_dips).
        closed_level: the opening under which the mouth counts as closed.
    """

    dips: int
    closed_at_dips: float | None
    closed_in_speech: float | None
    closed_level: float


def closed_level(opening: Sequence[float | None], share: float = CLOSED_SHARE) -> float:
    """The opening under which a mouth counts as closed, from a video's own range of openings.

    Args:
        opening: per-frame mouth opening of the unchanged video (None where no face was found).
        share: how far from its 5th to its 95th percentile the threshold lies.
    """
    values = np.array([v for v in opening if v is not None], np.float64)
    if not values.size:
        return math.nan
    low, high = np.percentile(values, [5, 95])
    return float(low + share * (high - low))


def speech_dips(envelope: np.ndarray, below_p95_db: float = LOUD_BELOW_P95_DB, depth_db: float = DIP_DEPTH_DB,
                reach: int = DIP_REACH) -> list[int]:
    """Frames at the bottom of short loudness dips with loud speech on both sides.

    Args:
        envelope: per-frame loudness in dB (`evaluation.loudness_envelope`).
        below_p95_db: how far under the 95th percentile speech still counts as loud.
        depth_db: least depth of a dip under the quieter of its two sides' peaks.
        reach: frames either side in which both peaks must lie.

    Returns:
        The dip frames, in order; the frames of one dip give one entry (its quietest frame).
    """
    env = np.asarray(envelope, np.float64)
    n = env.size
    if n < 2 * reach + 1:
        return []
    loud = float(np.percentile(env, 95)) - below_p95_db
    candidates = [k for k in range(reach, n - reach)
                  if (side := min(env[k - reach:k].max(), env[k + 1:k + 1 + reach].max())) >= loud
                  and env[k] <= side - depth_db]
    # Neighbouring candidates are one dip: keep its quietest frame.
    dips: list[int] = []
    group: list[int] = []
    for k in candidates + [n + reach + 1]:
        if group and k - group[-1] > 1:
            dips.append(min(group, key=lambda f: env[f]))
            group = []
        group.append(k)
    return dips


def closure_score(opening: Sequence[float | None], envelope: np.ndarray, level: float,
                  tolerance: int = TOLERANCE) -> ClosureScore:
    """How often the mouth is closed at the speech's dips and during loud speech.

    Args:
        opening: per-frame mouth opening (None where no face was found).
        envelope: per-frame loudness in dB of the speech heard with these frames.
        level: `closed_level` of the unchanged video (the same face).
        tolerance: frames either side of a dip in which a closed mouth counts.
    """
    n = min(len(opening), len(envelope))
    mouth = np.array([np.nan if v is None else v for v in opening[:n]], np.float64)
    env = np.asarray(envelope[:n], np.float64)
    closed = mouth <= level  # NaN (no face) is never closed
    seen = ~np.isnan(mouth)
    dips = [k for k in speech_dips(env) if seen[max(0, k - tolerance):k + tolerance + 1].any()]
    # Closed within `tolerance` frames of each frame: the same window for the dips and for the chance level.
    near = closed.copy()
    for shift in range(1, tolerance + 1):
        near[shift:] |= closed[:-shift]
        near[:-shift] |= closed[shift:]
    hits = sum(bool(near[k]) for k in dips)
    loud = seen & (env >= float(np.percentile(env, 95)) - LOUD_BELOW_P95_DB) if n else seen
    return ClosureScore(
        dips=len(dips),
        closed_at_dips=hits / len(dips) if dips else None,
        closed_in_speech=float(near[loud].mean()) if loud.any() else None,
        closed_level=level,
    )
