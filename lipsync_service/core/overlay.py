"""The debug overlay (NV_AI4M_LS_DEBUG_MODE=1): what the lip-sync stage did to a frame, drawn into the frame.

Top centre, the frame number on a white label and, below it, `LIPSYNC ON` on green or `LIPSYNC OFF` on red.
The activation box (the region re-animated in this frame) is outlined in green when lip-sync is on and in
red when it is off or the frame is bypassed, with its coordinates written under it. Each face is outlined in
white and labelled `S<id>` (the client's speaker id, else the tracker's id), plus `[speaking]` when it speaks; under
the label, why the face was re-drawn (speaker data, only face, soundtrack sync or lip motion with its score, largest
face) or why a chosen face was kept as it was (mouth covered, turned away, unreadable, too small).

The processor draws it on the frames it processes (`annotate`); bypassed frames skip the processor, and the
pipeline draws theirs (`BypassOverlay`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import av
import cv2
import numpy as np

from lipsync_service.core.blend import Paste, copy_frame
from lipsync_service.core.crops import CropRegion, SquareBox, plane_arrays
from lipsync_service.core.tracking import TrackedFace
from lipsync_service.media.types import FrameJob

# BGR colours.
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GREEN = (0, 200, 0)
RED = (0, 0, 230)
_FONT = cv2.FONT_HERSHEY_SIMPLEX

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)
# FrameJob.meta key: the activation boxes drawn into a processed frame.
ACTIVATION = "overlay_activation"


@dataclass(frozen=True)
class SpeakerMark:
    """One face to outline: its box, its label (`S<id>`), whether it speaks in this frame, and a note under the
    label (why it was re-drawn, or why it was left alone)."""

    box: Rect
    label: str
    speaking: bool
    note: str = ""


def draw_overlay(frame: av.VideoFrame, index: int, *, lipsync_on: bool, activation: Sequence[Rect],
                 speakers: Sequence[SpeakerMark]) -> av.VideoFrame:
    """A copy of the frame (yuv420p, same timing) with the debug overlay drawn in; other pixels keep their values.

    Args:
        frame: the output frame.
        index: its output frame number.
        lipsync_on: whether the mouth was re-animated in this frame (green) or not (red).
        activation: the activation boxes, in frame pixels.
        speakers: the faces to outline in white.

    Returns:
        The new frame.
    """
    frame = frame if frame.format.name == "yuv420p" else frame.reformat(format="yuv420p")
    original = frame.to_ndarray(format="bgr24")
    bgr = original.copy()
    height, width = bgr.shape[:2]
    scale = max(0.35, height / 1080)
    thick = max(2, round(3 * scale))
    colour = GREEN if lipsync_on else RED
    number = _Label(f"frame {index}", top=int(8 * scale), scale=scale, width=width)
    state = _Label("LIPSYNC ON" if lipsync_on else "LIPSYNC OFF", top=number.bottom + int(6 * scale),
                   scale=scale, width=width)
    for x0, y0, x1, y1 in activation:
        cv2.rectangle(bgr, (x0, y0), (x1 - 1, y1 - 1), colour, thick)
        _text(bgr, f"{x0},{y0} {x1 - x0}x{y1 - y0}", (x0, y1 + thick + int(22 * scale)), scale, colour)
    for mark in speakers:
        x0, y0, x1, y1 = mark.box
        cv2.rectangle(bgr, (x0, y0), (x1 - 1, y1 - 1), WHITE, thick)
        label = f"{mark.label} [speaking]" if mark.speaking else mark.label
        # Inside the box's top-left corner, below the labels at the frame's top when the box reaches under them.
        top = max(y0, state.bottom) + 2 * thick + int(26 * scale)
        _text(bgr, label, (x0 + 2 * thick, top), scale, WHITE)
        if mark.note:
            _text(bgr, mark.note, (x0 + 2 * thick, top + int(30 * scale)), 0.8 * scale, WHITE)
    number.draw(bgr, WHITE)
    state.draw(bgr, colour)
    return _drawn_into(frame, bgr, np.any(bgr != original, axis=2))


def _drawn_into(frame: av.VideoFrame, bgr: np.ndarray, drawn: np.ndarray) -> av.VideoFrame:
    """A copy of the yuv420p frame taking the samples under `drawn` from `bgr`: the BGR round trip would shift
    every other pixel by a level or two."""
    out = copy_frame(frame)
    painted = plane_arrays(av.VideoFrame.from_ndarray(bgr, format="bgr24").reformat(format="yuv420p"))
    h, w = drawn.shape
    # A chroma sample covers a 2x2 block of luma samples: taken where any of them was drawn.
    chroma = np.zeros(((h + 1) // 2, (w + 1) // 2), bool)
    for dy in (0, 1):
        for dx in (0, 1):
            part = drawn[dy::2, dx::2]
            chroma[: part.shape[0], : part.shape[1]] |= part
    for dst, src, mask in zip(plane_arrays(out), painted, (drawn, chroma, chroma)):
        dst[mask] = src[mask]
    return out


def annotate(job: FrameJob, faces: Sequence[TrackedFace] = (), targets: Sequence[TrackedFace] = (), *,
             previous: Sequence[Rect] = ()) -> None:
    """Draw the overlay into a finished frame (replaces job.frame, sets job.changed, records job.meta[ACTIVATION]).

    Args:
        job: the frame; a bypassed one is drawn from the client's speaker data, any other from what the
            processor recorded in job.meta (`lipsync_regions`: crops sent to the generator, `lipsync_pastes`:
            where it wrote).
        faces: the faces tracked in the frame (none for a bypassed frame).
        targets: those selected for re-animation.
        previous: for a bypassed frame without speaking client boxes, the activation boxes of the frame before.
    """
    if _is_bypass(job):
        lipsync_on, (activation, speakers) = False, _client_marks(job)
        activation = activation or list(previous)
    else:
        lipsync_on, activation, speakers = _processed_marks(job, faces, targets)
    job.meta[ACTIVATION] = activation
    job.frame = draw_overlay(job.frame, job.index, lipsync_on=lipsync_on, activation=activation, speakers=speakers)
    job.changed = True


class BypassOverlay:
    """Draws the overlay on bypassed frames, which skip the processor: `LIPSYNC OFF`, the client's boxes, and
    in red the crop squares of the speaking ones, else the activation box of the processed frame before (the
    region lip-sync would have re-animated). Shown every output frame in order, after the processor drew its own."""

    def __init__(self) -> None:
        self._previous: list[Rect] = []

    def __call__(self, job: FrameJob) -> None:
        if _is_bypass(job):
            annotate(job, previous=self._previous)
        else:
            self._previous = job.meta.get(ACTIVATION, self._previous)


def _is_bypass(job: FrameJob) -> bool:
    return job.bypass or (job.speakers is not None and job.speakers.bypass)


def _processed_marks(job: FrameJob, faces: Sequence[TrackedFace],
                     targets: Sequence[TrackedFace]) -> tuple[bool, list[Rect], list[SpeakerMark]]:
    regions: list[CropRegion] = job.meta.get("lipsync_regions") or []
    pastes: list[Paste] = job.meta.get("lipsync_pastes") or []
    lipsync_on = bool(regions)
    # The mouth region actually written; else the crop square the generator saw, or would have seen.
    activation = [r for r in (_written(p) for p in pastes) if r is not None]
    if not activation:
        crops = regions or [f.crop.pixel_region() for f in (targets or faces)]
        activation = [(c.x, c.y, c.x + c.side, c.y + c.side) for c in crops]
    target_ids = {t.track_id for t in targets}
    # Why each chosen face was re-drawn ("soundtrack sync 0.52") or left alone ("mouth covered").
    notes = {label: why for label, why, _ in job.meta.get("lipsync_drawn", ())}
    notes.update({label: f"kept: {why}" for label, why, _ in job.meta.get("lipsync_skipped", ())})
    speakers = []
    for face in faces:
        label = f"S{face.speaker_id if face.speaker_id is not None else face.track_id}"
        speakers.append(SpeakerMark(
            box=_rect(face.box), label=label,
            speaking=face.speaking if face.speaking is not None else face.track_id in target_ids,
            note=notes.get(label, "")))
    return lipsync_on, activation, speakers


def _client_marks(job: FrameJob) -> tuple[list[Rect], list[SpeakerMark]]:
    """A bypassed frame: the faces are the client's boxes; the crop squares of the speaking ones are what
    would have been re-animated."""
    boxes = [s for s in (job.speakers.speakers if job.speakers is not None else ()) if not s.is_empty]
    speakers = [SpeakerMark(box=_rect((s.x, s.y, s.x + s.width, s.y + s.height)),
                            label=f"S{s.speaker_id if s.speaker_id is not None else '?'}", speaking=s.is_speaking)
                for s in boxes]
    crops = [SquareBox.around_face(m.box).pixel_region() for m in speakers if m.speaking]
    return [(c.x, c.y, c.x + c.side, c.y + c.side) for c in crops], speakers


def _written(paste: Paste) -> Rect | None:
    """The bounding box of the samples a paste wrote (its alpha > 0), or None when it wrote none."""
    rows, cols = np.nonzero(np.asarray(paste.alpha) > 0)
    if rows.size == 0:
        return None
    return (paste.x + int(cols.min()), paste.y + int(rows.min()),
            paste.x + int(cols.max()) + 1, paste.y + int(rows.max()) + 1)


def _rect(box: Iterable[float]) -> Rect:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return x0, y0, x1, y1


def _text(bgr: np.ndarray, text: str, origin: tuple[int, int], scale: float, colour: tuple[int, int, int]) -> None:
    """Text with a dark outline, readable on any background."""
    size, weight = 1.2 * scale, max(1, round(2 * scale))
    cv2.putText(bgr, text, origin, _FONT, size, BLACK, weight + 2, cv2.LINE_AA)
    cv2.putText(bgr, text, origin, _FONT, size, colour, weight, cv2.LINE_AA)


class _Label:
    """Black text on a filled box, centred horizontally in a frame `width` wide, with its top at `top`."""

    def __init__(self, text: str, *, top: int, scale: float, width: int) -> None:
        self.text, self.size, self.weight = text, 1.8 * scale, max(1, round(2 * scale))
        (w, self.h), base = cv2.getTextSize(text, _FONT, self.size, self.weight)
        self.pad = max(4, int(10 * scale))
        self.x0, self.top = max(0, (width - w) // 2 - self.pad), top
        self.x1, self.bottom = self.x0 + w + 2 * self.pad, top + self.h + base + 2 * self.pad

    def draw(self, bgr: np.ndarray, background: tuple[int, int, int]) -> None:
        cv2.rectangle(bgr, (self.x0, self.top), (self.x1, self.bottom), background, cv2.FILLED)
        cv2.putText(bgr, self.text, (self.x0 + self.pad, self.top + self.pad + self.h), _FONT, self.size, BLACK,
                    self.weight, cv2.LINE_AA)
