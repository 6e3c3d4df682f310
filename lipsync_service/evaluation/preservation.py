"""What the lip-sync must leave alone: PSNR outside the lower face, and the fidelity measures
(`evaluation.fidelity`) driven from one decode of the output and of the unchanged video."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lipsync_service.evaluation.fidelity import FidelityMeter, FidelityScores, measure_fidelity


class _OutsidePsnr:
    """PSNR over the pixels outside per-frame lower-face boxes, pooled over frames, one frame pair at a time."""

    def __init__(self) -> None:
        self.se = 0.0
        self.count = 0

    def add(self, output: np.ndarray, original: np.ndarray, box: list | None) -> None:
        x = output.astype(np.int32)
        y = original.astype(np.int32)
        keep = np.ones(x.shape[:2], bool)
        if box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            keep[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = False
        d = (x - y)[keep]
        self.se += float((d * d).sum())
        self.count += d.size

    def db(self) -> float:
        if self.count == 0 or self.se == 0:
            return math.inf
        return 10 * math.log10(255.0**2 / (self.se / self.count))


def psnr_outside(output: Path, original: Path, lower_face: list) -> float:
    """PSNR (dB) over all pixels outside the lower-face boxes, pooled over frames (inf when identical).

    Args:
        output: the lip-synced video.
        original: the unchanged video, same frames and size.
        lower_face: per-frame [x0, y0, x1, y1] from the original (None: the whole frame is compared).
    """
    meter = _OutsidePsnr()
    for k, (x, y) in enumerate(zip(_frames(output), _frames(original))):
        meter.add(x, y, lower_face[k] if k < len(lower_face) else None)
    return meter.db()


def _frames(video: Path) -> Iterator[np.ndarray]:
    """The video's frames as RGB uint8 arrays, one at a time."""
    import av

    with av.open(str(video)) as c:
        for frame in c.decode(c.streams.video[0]):
            yield frame.to_ndarray(format="rgb24")


def compare_videos(output: Path, original: Path, marks_out: dict, marks_in: dict,
                   envelope: np.ndarray | None) -> tuple[float, FidelityScores]:
    """`psnr_outside` on the original's lower-face boxes and `fidelity_scores`, from one decode of each video.

    Returns:
        (PSNR outside the lower face in dB, the fidelity scores).
    """
    outside = _OutsidePsnr()
    meter = FidelityMeter()
    boxes, points_in, points_out = marks_in["lower_face"], marks_in["points"], marks_out["points"]
    for k, (x, y) in enumerate(zip(_frames(output), _frames(original))):
        outside.add(x, y, boxes[k] if k < len(boxes) else None)
        if k < len(points_in):
            meter.add(x, y, points_out[k] if k < len(points_out) else None, points_in[k])
    return outside.db(), meter.scores(envelope)


def fidelity_scores(output: Path, original: Path, marks_out: dict, marks_in: dict,
                    envelope: np.ndarray | None) -> FidelityScores:
    """Lip and lower-face sharpness, lower-face PSNR and lip motion (all and in silence) of the output against
    the unchanged video at the same frame index, on the landmark model's points (see `fidelity`).

    Args:
        output: the lip-synced video.
        original: the unchanged video, same frames and size.
        marks_out: `measure_landmarks` of the output.
        marks_in: `measure_landmarks` of the original.
        envelope: per-frame speech loudness (dB).
    """
    return measure_fidelity(_frames(output), _frames(original), marks_out["points"], marks_in["points"], envelope)

