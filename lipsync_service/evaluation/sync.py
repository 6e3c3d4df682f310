"""Sync: Pearson correlation of the mouth opening with the speech loudness, at lag 0 and at the best lag.

The opening comes from the independent landmark model (`evaluation.landmarks`), the loudness from
`evaluation.speech.loudness_envelope`. The same score is computed for the unchanged video with that speech
(about 0) and for the real footage with its own speech (the reference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_LAG = 6


@dataclass
class SyncScore:
    """Sync of mouth opening with speech loudness.

    Attributes:
        r_lag0: Pearson r at lag 0.
        best_lag: lag (frames, positive: mouth after sound) with the highest r within +-MAX_LAG.
        r_best: r at that lag.
        frames: frames scored (a face found by the landmark model).
    """

    r_lag0: float
    best_lag: int
    r_best: float
    frames: int



def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two equal-length series (0 when either is constant)."""
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def sync_score(opening: list[float | None], envelope: np.ndarray, max_lag: int = MAX_LAG) -> SyncScore:
    """Correlate mouth opening with loudness at lags -max_lag..max_lag (frames with a face only).

    Args:
        opening: per-frame mouth opening, None where no face was found.
        envelope: per-frame loudness.
        max_lag: largest lag tried.

    Returns:
        the SyncScore.
    """
    n = min(len(opening), len(envelope))
    mouth = np.array([np.nan if v is None else v for v in opening[:n]], np.float64)
    env = np.asarray(envelope[:n], np.float64)

    def r_at(lag: int) -> float:
        # lag > 0 compares the mouth at frame k + lag with the sound at frame k.
        m = mouth[lag:] if lag >= 0 else mouth[:lag]
        e = env[: n - lag] if lag >= 0 else env[-lag:]
        ok = ~np.isnan(m)
        return pearson(m[ok], e[ok]) if ok.sum() > 2 else 0.0

    lags = {lag: r_at(lag) for lag in range(-max_lag, max_lag + 1)}
    best = max(lags, key=lambda k: lags[k])
    return SyncScore(lags[0], best, lags[best], int((~np.isnan(mouth)).sum()))

