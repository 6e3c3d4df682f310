"""Lips across frames, per face track: landmarks followed and smoothed, the speaker's own lip statistics, the
bank of open-mouth interiors, and the mouth-only edit of a frame for a target lip shape.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import av
import numpy as np

from lipsync_service.core.crops import CropRegion, extract_bgr_scaled, extract_box_bgr
from lipsync_service.core.landmarks import CHIN, NOSE_TIP, OUTER_LIPS, FaceLandmarker, FaceLandmarks
from lipsync_service.core.mouth import (
    JAW_LINE,
    LOWER_MID,
    OUTER_CORNERS,
    UPPER_MID,
    FaceFrame,
    MouthEdit,
    SpeakerStats,
    lip_ratios,
    mouth_region,
    region_alpha,
    target_lips,
    warp_mouth,
)
from lipsync_service.core.mouth_bank import MouthBank

log = logging.getLogger(__name__)

# The image the landmark model and the warp read: a square around the face this many face-box sides wide
# (the landmark crop is 1.5x the box, and the warp samples a little beyond the mouth).
CONTEXT_SCALE = 1.9
# One-euro smoothing of the landmarks (Casiez et al.): the cut-off rises with speed, so a still face does not
# jitter and a moving one does not lag. Speeds in face heights per second. Per head_movement_speed 0 / 1.
MIN_CUTOFF_HZ = (1.2, 3.0)
SPEED_COEFF = (4.0, 8.0)
DERIVATIVE_CUTOFF_HZ = 1.0
# Largest side (pixels) of the face's surroundings handed to the landmark model; larger faces are shrunk first.
LANDMARK_CONTEXT_PX = 640
# The full-resolution image kept around the mouth (mouth_box), in mouth widths beyond the lips, chin and nose.
MOUTH_BOX_SIDE = 0.4
MOUTH_BOX_TOP = 0.1
MOUTH_BOX_BOTTOM = 0.8
# A mesh whose mouth centre is outside the tracked face box is a misread, not a face.
MOUTH_IN_BOX_SLACK = 0.15
# How far a model that re-draws the whole crop (RGB contract) may open the mouth beyond the source's, as a
# fraction of the face height; its paste region reaches that far.
RGB_OPEN_REACH = 0.10
# A closure probability maps to a drawn closure between these (articulation_strength). Chosen with tools/closure_ramp.py
# on the viseme model's held-out English speech, never on an evaluation clip: the drawn gap's bilabial contrast
# there is 0.731 with 0.08-0.3 (the previous ramp), 0.767 with this one, 0.771 with 0.04-0.15, 0.749 with 0.03-0.1.
CLOSURE_FROM = 0.05
CLOSURE_FULL = 0.2
# The same for a rounding probability (chosen on a training identity with speech outside the evaluation set).
ROUND_FROM = 0.08
ROUND_FULL = 0.3
# Warn about faces whose landmarks cannot be read at most once per this many frames per track.
WARN_EVERY_FRAMES = 250


def _alpha(cutoff: float | np.ndarray, rate: float) -> float | np.ndarray:
    """The one-euro filter's smoothing factor for a cut-off frequency at a sample rate."""
    return 1.0 / (1.0 + rate / (2 * math.pi * cutoff))


@dataclass
class _OneEuro:
    rate: float
    min_cutoff: float
    coeff: float
    value: np.ndarray | None = None
    speed: float = 0.0

    def __call__(self, x: np.ndarray, scale: float) -> np.ndarray:
        if self.value is None:
            self.value = x.copy()
            return x
        # One speed for the whole mesh (its mean point speed): every point gets the same smoothing factor,
        # so the mesh keeps its shape; per-point factors would let slow points lag fast ones and bend the lips.
        d = float(np.linalg.norm(x - self.value, axis=-1).mean()) * self.rate / max(scale, 1e-6)
        self.speed = self.speed + float(_alpha(DERIVATIVE_CUTOFF_HZ, self.rate)) * (d - self.speed)
        cutoff = self.min_cutoff + self.coeff * abs(self.speed)
        self.value = self.value + float(_alpha(cutoff, self.rate)) * (x - self.value)
        return self.value


@dataclass
class LipState:
    """What is known about one face track's lips: smoothing, the speaker's statistics, the interior bank."""

    smoother: _OneEuro
    stats: SpeakerStats = field(default_factory=SpeakerStats)
    bank: MouthBank = field(default_factory=MouthBank)
    last: FaceLandmarks | None = None
    last_index: int = -10
    misses: int = 0
    last_warned: int = -(10**9)


@dataclass
class LipRead:
    """One face's lips in one frame.

    Attributes:
        points: smoothed face mesh [468, 2] in frame pixels.
        raw: the mesh as read [468, 2].
        mesh: the mesh as read with depth [468, 3] (z in the same pixel scale as x and y).
        image: BGR of the frame around the mouth (lower face), at full resolution; origin: its top-left in frame
            pixels.
        state: the track's lip state (statistics, bank) at the time of the read; the edit uses it even when the
            track has ended since.
    """

    points: np.ndarray
    raw: np.ndarray
    mesh: np.ndarray
    image: np.ndarray
    origin: tuple[int, int]
    state: LipState


def mouth_box(raw: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) in frame pixels holding everything a mouth edit may touch or sample: the lips with room to
    open and stretch, and the jaw line with room to drop, from just above the nose tip to below the chin."""
    lips = raw[list(OUTER_LIPS) + list(JAW_LINE), :2]
    width = max(float(np.linalg.norm(raw[OUTER_CORNERS[0], :2] - raw[OUTER_CORNERS[1], :2])), 4.0)
    xs = np.concatenate([lips[:, 0], raw[[CHIN, NOSE_TIP], 0]])
    ys = np.concatenate([lips[:, 1], raw[[CHIN, NOSE_TIP], 1]])
    return (int(math.floor(xs.min() - MOUTH_BOX_SIDE * width)), int(math.floor(ys.min() - MOUTH_BOX_TOP * width)),
            int(math.ceil(xs.max() + MOUTH_BOX_SIDE * width)), int(math.ceil(ys.max() + MOUTH_BOX_BOTTOM * width)))


def articulation_strength(probability: float, start: float, full: float) -> float:
    """How far a closure (CLOSURE_FROM, CLOSURE_FULL) or a rounding (ROUND_FROM, ROUND_FULL) is drawn for the
    model's probability of a bilabial (or rounded sound).

    The model's probabilities are calibrated to how often a frame is inside a p, b or m (a rounded sound), a few
    per cent of speech, and such a sound lasts one to three frames, so even a certain one rarely reads above 0.5:
    a probability of `start` draws nothing and one of `full` or more draws the whole articulation.
    """
    return min(max((probability - start) / (full - start), 0.0), 1.0)


class LipTracker:
    """Reads and follows the lips of every tracked face of one stream."""

    def __init__(self, landmarker: FaceLandmarker, fps: float, head_movement_speed: int = 0) -> None:
        """Args:
            landmarker: the face-mesh model (shared by all streams; it holds no per-call state).
            fps: frame rate of the stream (for the smoothing's time constants).
            head_movement_speed: 0 smooths strongly, 1 follows fast motion.
        """
        self._landmarker = landmarker
        self._rate = max(float(fps), 1.0)
        speed = 1 if head_movement_speed else 0
        self._min_cutoff, self._coeff = MIN_CUTOFF_HZ[speed], SPEED_COEFF[speed]
        self._tracks: dict[int, LipState] = {}
        self.misses = 0

    def read(self, frame: av.VideoFrame, index: int, track_id: int,
             box: tuple[float, float, float, float]) -> LipRead | None:
        """The lips of one tracked face in a frame, or None when the landmark model cannot read them.

        Args:
            frame: the decoded yuv420p frame.
            index: its output index (frames come in order).
            track_id: the face's track.
            box: the face's detector box (x1, y1, x2, y2) in frame pixels.
        """
        track = self._tracks.get(track_id)
        if track is None:
            track = self._tracks[track_id] = LipState(_OneEuro(self._rate, self._min_cutoff, self._coeff))
        x1, y1, x2, y2 = box
        side = CONTEXT_SCALE * max(x2 - x1, y2 - y1)
        region = CropRegion(x=int(round(((x1 + x2) / 2 - side / 2) / 2)) * 2,
                            y=int(round(((y1 + y2) / 2 - side / 2) / 2)) * 2, side=max(8, int(side) // 2 * 2))
        # The landmark model sees a 192-pixel crop: a large face's surroundings are shrunk before conversion.
        context = min(region.side, LANDMARK_CONTEXT_PX)
        image = extract_bgr_scaled(frame, region, context)
        scale = context / region.side
        origin = np.array([region.x, region.y, 0.0], np.float32)
        mesh = None
        if track.last is not None and index - track.last_index == 1:
            shifted = FaceLandmarks(points=(track.last.points - origin) * scale, score=track.last.score,
                                    roi=track.last.roi)
            mesh = self._landmarker.track(image, shifted)
        if mesh is None:
            mesh = self._landmarker.detect(image, ((x1 - region.x) * scale, (y1 - region.y) * scale,
                                                   (x2 - region.x) * scale, (y2 - region.y) * scale))
        points = None
        if mesh is not None:
            points = (mesh.points / scale + origin).astype(np.float32)
            mouth = (points[13, :2] + points[14, :2]) / 2
            w, h = x2 - x1, y2 - y1
            if not (x1 - MOUTH_IN_BOX_SLACK * w <= mouth[0] <= x2 + MOUTH_IN_BOX_SLACK * w
                    and y1 <= mouth[1] <= y2 + MOUTH_IN_BOX_SLACK * h):
                points = None
        if mesh is None or points is None:
            track.last = None
            track.misses += 1
            self.misses += 1
            if index - track.last_warned >= WARN_EVERY_FRAMES:
                track.last_warned = index
                log.warning("face track %d, frame %d: the landmark model cannot read the lips; this face is "
                            "left unchanged where that happens (%d frames so far)", track_id, index, track.misses)
            return None
        raw = points[:, :2]
        track.last = FaceLandmarks(points=points, score=mesh.score, roi=mesh.roi)
        track.last_index = index
        scale_px = FaceFrame.of(raw).height
        smoothed = track.smoother(raw.astype(np.float64), scale_px)
        opening, width = lip_ratios(raw)
        track.stats.observe(opening, width)
        mouth_image, mouth_origin = extract_box_bgr(frame, *mouth_box(raw))
        track.bank.offer(mouth_image, mouth_origin, raw)
        return LipRead(points=smoothed.astype(np.float32), raw=raw.copy(), mesh=points, image=mouth_image,
                       origin=mouth_origin, state=track)

    @staticmethod
    def reshape(lips: LipRead, shape_z: np.ndarray, frame_size: tuple[int, int]) -> MouthEdit | None:
        """The mouth-only edit that gives this face the target lip shape.

        Args:
            lips: this frame's read of the face (its track's statistics map z to pixels, its bank supplies
                interiors).
            shape_z: the model's row: (opening, width) in the speaker's standard deviations, optionally followed by
                the strengths of closure, tuck and rounding in [0, 1] (docs/models-contract.md#lip-shape).
            frame_size: (width, height) of the frame.
        """
        state = lips.state
        opening, width = state.stats.shape_for(float(shape_z[0]), float(shape_z[1]))
        closure, tuck, rounding = (float(v) for v in (list(shape_z[2:5]) + [0.0, 0.0, 0.0])[:3])
        closure = articulation_strength(closure, CLOSURE_FROM, CLOSURE_FULL)
        rounding = articulation_strength(rounding, ROUND_FROM, ROUND_FULL)
        # Drawn on the smoothed mesh (steady lips), sampled from this frame's own mesh (where the pixels are).
        target = target_lips(lips.points, opening, width, closure=closure, tuck=tuck, rounding=rounding)
        edit = warp_mouth(lips.image, lips.origin, lips.raw, target, frame_size, seal=closure)
        if edit is None:
            return None
        face = FaceFrame.of(lips.raw)
        source_gap = float((lips.raw[LOWER_MID] - lips.raw[UPPER_MID]) @ face.down)
        state.bank.fill(edit, source_gap)
        return edit

    @staticmethod
    def mouth_alpha(lips: LipRead, x: int, y: int, side: int) -> np.ndarray:
        """Blend weights over a square (x, y, side) limited to this face's dilated mouth region, for models
        that re-draw a whole crop: only their mouth is pasted. The region covers the lips as they are and
        opened wide (RGB_OPEN_REACH of the face height), since such a model may open the mouth."""
        opening, width = lip_ratios(lips.points)
        wide = target_lips(lips.points, opening + RGB_OPEN_REACH, width)
        hull, margin = mouth_region(lips.points, wide)
        return region_alpha(hull, margin, x, y, side, side)

    def retain(self, track_ids: set[int]) -> None:
        """Forget tracks that ended."""
        for gone in set(self._tracks) - track_ids:
            del self._tracks[gone]
