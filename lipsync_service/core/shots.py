"""Shot boundaries: hard cuts, and gradual transitions (fades through black or white, dissolves), found frame by frame.

Face tracks, lip statistics and mouth-interior banks describe one person in one shot; a new shot may show someone
else in the same place, so everything per face starts afresh there (docs/behaviour.md#shots).

Each frame is reduced to a small luma thumbnail and a colour histogram (from the yuv420p planes, no colour
conversion). Two distances between consecutive frames: the mean absolute thumbnail difference (sensitive to any
change, motion included) and half the L1 distance of the histograms (blind to motion within the picture). A hard
cut is a frame where both jump: above fixed floors and well above the recent level of ordinary change, so a pan
or a moving hand does not start a shot. A gradual transition is a run of frames whose content drifts steadily
until the frame a little later is as different from the one before the run as after a cut; frames inside it are
marked, and the shot after it starts where the drift ends. A frame with almost no detail (a fade's black or
white, an empty wall) is a transition frame itself.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import av
import cv2
import numpy as np

from lipsync_service.core.crops import plane_arrays

# Thumbnail size (luma) the distances are computed on.
THUMB_W, THUMB_H = 48, 27
# Histogram bins: luma, and the joint (U, V) plane.
Y_BINS, UV_BINS = 16, 8
# Hard cut: the combined change (thumbnail + histogram distance) over CUT_FLOOR and over CUT_RATIO times its recent
# median. Measured on the 40 talking-head clips of the test media (first 300 frames each) and the 1,560 cuts between
# their last and first frames: no cut between two different clips under 0.08, ordinary frame-to-frame change at
# most 0.10 but then never 5x its recent median (2 of 6,659 frames over both, in clips with a jump of their own).
CUT_FLOOR = 0.05
CUT_RATIO = 5.0
# Frames of ordinary change the recent level is the median of.
HISTORY = 25
# Cuts this close together are one transition (a dissolve changes every frame by a cut's worth of histogram).
RUN_GAP = 2
# A run of jumps longer than this (frames) is not a transition but how this footage moves (a fast pan, flicker, a
# moving pattern): its changes become the recent level and a shot starts, so such a video is not left unedited.
MAX_RUN = 25
# Gradual transition: over at most GRADUAL_SPAN frames, the histogram distance from the frame before the run grows
# past GRADUAL_HIST while every step stays under a cut and above GRADUAL_STEP (a steady drift, not a still scene).
GRADUAL_SPAN = 30
GRADUAL_HIST = 0.35
GRADUAL_STEP = 0.01
# A frame whose thumbnail spans fewer grey levels than this holds nothing to track (black, white, flat). The range,
# not the spread: a small face on a plain wall is a few thumbnail pixels, yet far from the wall's grey.
BLANK_RANGE = 16.0


@dataclass(frozen=True)
class ShotFrame:
    """What the detector says about one frame.

    Attributes:
        shot: number of the shot the frame belongs to (0 for the first; grows by one at each boundary).
        cut: the frame is the first of a new shot after a hard cut.
        transition: the frame is part of a gradual transition or blank; nothing in it should be edited.
        marked_from: when a gradual transition has just been recognised, the first frame of it (earlier frames
            from that one on, still held by the caller, are transition frames too); else None.
    """

    shot: int
    cut: bool = False
    transition: bool = False
    marked_from: int | None = None


@dataclass
class _Signature:
    thumb: np.ndarray  # float32 [THUMB_H, THUMB_W]
    hist: np.ndarray  # float32, sums to 1
    blank: bool


def signature(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, bool]:
    """(luma thumbnail, colour histogram, blank) of a yuv420p frame."""
    y, u, v = plane_arrays(frame)
    # A strided view first: area-resizing the whole plane costs several times more, and the thumbnail is coarse.
    step = max(1, min(y.shape[0] // (4 * THUMB_H), y.shape[1] // (4 * THUMB_W)))
    thumb = cv2.resize(y[::step, ::step], (THUMB_W, THUMB_H), interpolation=cv2.INTER_AREA).astype(np.float32)
    cstep = max(1, step // 2)
    us, vs = u[::cstep, ::cstep], v[::cstep, ::cstep]
    hy = np.bincount(((thumb.astype(np.int32) * Y_BINS) >> 8).ravel(), minlength=Y_BINS).astype(np.float32)
    joint = ((us.astype(np.int32) * UV_BINS) >> 8) * UV_BINS + ((vs.astype(np.int32) * UV_BINS) >> 8)
    huv = np.bincount(joint.ravel(), minlength=UV_BINS * UV_BINS).astype(np.float32)
    hist = np.concatenate([hy / max(hy.sum(), 1.0), huv / max(huv.sum(), 1.0)]) / 2
    return thumb, hist, float(thumb.max() - thumb.min()) < BLANK_RANGE


class ShotDetector:
    """Shot boundaries of one stream; call `observe` for every frame in order."""

    def __init__(self) -> None:
        self._prev: _Signature | None = None
        self._shot = 0
        self._recent: deque[float] = deque(maxlen=HISTORY)
        # The drift being followed: signature of the frame before it, its first frame, steps so far.
        self._anchor: _Signature | None = None
        self._drift_start = 0
        self._in_transition = False
        # The latest hard cut, and the first frame of the run of cuts it belongs to.
        self._last_cut: int | None = None
        self._run_start = 0
        self._run_changes: list[float] = []
        self.cuts = 0
        self.transitions = 0

    @property
    def shot(self) -> int:
        """The current shot number."""
        return self._shot

    def observe(self, frame: av.VideoFrame, index: int) -> ShotFrame:
        """Classify frame `index` (frames must come in order, each once)."""
        thumb, hist, blank = signature(frame)
        sig = _Signature(thumb, hist, blank)
        prev, self._prev = self._prev, sig
        if prev is None:
            self._in_transition = blank
            return ShotFrame(self._shot, transition=blank)
        pixel = float(np.abs(thumb - prev.thumb).mean()) / 255.0
        colour = 0.5 * float(np.abs(hist - prev.hist).sum())
        change = pixel + colour
        level = float(np.median(self._recent)) if self._recent else 0.0
        jump = change > CUT_FLOOR and change > CUT_RATIO * level
        if jump and not blank:
            if self._last_cut is not None and index - self._last_cut <= RUN_GAP:
                self._run_changes.append(change)
                if index - self._run_start > MAX_RUN:
                    self._recent.extend(self._run_changes)
                    self._last_cut, self._run_changes = None, []
                    return self._start(index, cut=False)
                # Jumps in consecutive frames: a dissolve or a flash, not shots of a frame or two. Its frames are
                # mixtures; the shot after it starts where the jumps end (tracks restart at every jump).
                start, self._last_cut = self._run_start, index
                return ShotFrame(self._shot, cut=True, transition=True, marked_from=start)
            self._run_start = self._last_cut = index
            self._run_changes = [change]
            self._in_transition = False
            return self._start(index, cut=True)
        if blank:
            # Black, white or an empty wall (a fade, or the person stepped out): the shot after it starts at the first
            # frame with content again, whether it comes back at once or fades in.
            self._anchor = None
            self._in_transition = True
            return ShotFrame(self._shot, transition=True)
        if self._in_transition:
            self._in_transition = False
            return self._start(index, cut=False)
        self._recent.append(change)
        return self._follow_drift(sig, prev, index, colour)

    def _follow_drift(self, sig: _Signature, prev: _Signature, index: int, step: float) -> ShotFrame:
        if step < GRADUAL_STEP:
            self._anchor = None
            return ShotFrame(self._shot)
        if self._anchor is None:
            self._anchor, self._drift_start = prev, index
            return ShotFrame(self._shot)
        if index - self._drift_start > GRADUAL_SPAN:
            # Too slow for a transition: a scene that changes, keep following from here.
            self._anchor, self._drift_start = prev, index
            return ShotFrame(self._shot)
        apart = 0.5 * float(np.abs(sig.hist - self._anchor.hist).sum())
        if apart > GRADUAL_HIST:
            start = self._drift_start
            self._anchor = None
            self.transitions += 1
            self._shot += 1
            return ShotFrame(self._shot, cut=True, transition=False, marked_from=start)
        return ShotFrame(self._shot)

    def _start(self, index: int, *, cut: bool) -> ShotFrame:
        # The recent level of change is kept: it describes the footage, and right after a cut an empty history would
        # make any motion a cut.
        self._shot += 1
        self._anchor = None
        if cut:
            self.cuts += 1
        return ShotFrame(self._shot, cut=True)
