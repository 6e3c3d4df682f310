"""Which faces are re-drawn: the client's speaker data when given, else the largest tracked face."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import overload

from lipsync_service.core.faces import Face
from lipsync_service.core.tracking import Box, FaceTracker, Observation, TrackedFace, iou
from lipsync_service.speakers import FrameSpeakers

# A challenger must be this much larger (crop side) to take over as "the largest face": stops the
# re-drawn face from flipping between two faces of about the same size.
LARGEST_HYSTERESIS = 1.2


def needs_detection(speakers: FrameSpeakers | None) -> bool:
    """Whether this frame's faces come from the detector (no data, an empty list, or an all-zero box)."""
    return speakers is None or speakers.needs_detection


@overload
def observations(speakers: FrameSpeakers | None, detect: Callable[[], list[Face]],
                 tracker: FaceTracker) -> list[Observation]: ...
@overload
def observations(speakers: FrameSpeakers | None, detect: Callable[[], list[Face]] | None,
                 tracker: FaceTracker) -> list[Observation] | None: ...


def observations(speakers: FrameSpeakers | None, detect: Callable[[], list[Face]] | None,
                 tracker: FaceTracker) -> list[Observation] | None:
    """The faces seen in one frame.

    Args:
        speakers: the client's data for the frame, or None.
        detect: runs the detector on this frame; None when detection is skipped (cadence), in which
            case frames without client boxes report nothing and the tracker carries the faces over.
        tracker: used to match detections to a speaker whose box is all zeros.

    Returns:
        Observations, or None when nothing was observed in this frame (no detection ran).
    """
    if speakers is None or not speakers.speakers:
        if detect is None:
            return None
        return [Observation(box=f.box) for f in detect()]
    out: list[Observation] = []
    detections: list[Face] | None = None
    claimed: set[int] = set()
    for s in speakers.speakers:
        if not s.is_empty:
            box: Box = (s.x, s.y, s.x + s.width, s.y + s.height)
            out.append(Observation(box=box, speaker_id=s.speaker_id, speaking=s.is_speaking, from_client=True))
            continue
        # An all-zero box: find this speaker's face ourselves.
        if detections is None:
            detections = detect() if detect is not None else []
        choice = _match_detection(detections, claimed, tracker.track_for_speaker(s.speaker_id)
                                  if s.speaker_id is not None else None)
        if choice is not None:
            claimed.add(choice)
            out.append(Observation(box=detections[choice].box, speaker_id=s.speaker_id, speaking=s.is_speaking))
    return out


def _match_detection(detections: Sequence[Face], claimed: set[int], last_box: Box | None) -> int | None:
    free = [k for k in range(len(detections)) if k not in claimed]
    if not free:
        return None
    if last_box is not None:
        best = max(free, key=lambda k: iou(detections[k].box, last_box))
        if iou(detections[best].box, last_box) > 0:
            return best
    return max(free, key=lambda k: detections[k].area)


class TargetSelector:
    """Picks the faces to re-draw in each frame, keeping the choice stable over time."""

    def __init__(self) -> None:
        self._largest: int | None = None

    def select(self, faces: Sequence[TrackedFace], speakers: FrameSpeakers | None) -> list[TrackedFace]:
        """The faces to re-draw in one frame.

        With speaker data naming faces: those flagged speaking (several may speak at once). Otherwise
        (no data, or an empty list for this frame): the largest face.
        """
        if speakers is not None and speakers.bypass:
            return []
        if speakers is not None and speakers.speakers:
            return [f for f in faces if f.speaking]
        if not faces:
            return []
        biggest = max(faces, key=lambda f: f.crop.side)
        current = next((f for f in faces if f.track_id == self._largest), None)
        if current is None or biggest.crop.side > LARGEST_HYSTERESIS * current.crop.side:
            current = biggest
        self._largest = current.track_id
        return [current]
