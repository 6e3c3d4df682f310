"""Per-frame speaker data: model, parsing from the wire and from JSON, validation."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lipsync_service.errors import InvalidInput


@dataclass(frozen=True)
class SpeakerBox:
    """A face in one frame: box (pixels, top-left + size), stable id, speaking flag."""

    x: float
    y: float
    width: float
    height: float
    speaker_id: int | None = None
    is_speaking: bool = False

    @property
    def is_empty(self) -> bool:
        """An all-zero box means: detect the face yourself in this frame."""
        return self.x == 0 and self.y == 0 and self.width == 0 and self.height == 0


@dataclass(frozen=True)
class FrameSpeakers:
    """Speaker data of one frame. An empty list means: detect faces yourself."""

    frame_id: int
    speakers: tuple[SpeakerBox, ...] = ()
    bypass: bool = False

    @property
    def needs_detection(self) -> bool:
        return not self.speakers or any(s.is_empty for s in self.speakers)


class SpeakerData:
    """All speaker data of a job, indexed by input frame number.

    Thread-safe: the RPC adds batches while the pipeline thread waits for the frame it needs.
    """

    def __init__(self) -> None:
        self._frames: dict[int, FrameSpeakers] = {}
        self._highest = -1
        self._closed = False
        self._cond = threading.Condition()

    def close(self) -> None:
        """No more data will come: waiters return what there is."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait_for(self, frame_id: int, timeout: float | None = None) -> FrameSpeakers | None:
        """The data of frame_id, waiting until it arrives, a later frame arrives, or input ends.

        Clients send frames in order, so data for a later frame means this one was not given.
        """
        with self._cond:
            self._cond.wait_for(
                lambda: frame_id in self._frames or self._highest > frame_id or self._closed, timeout
            )
            return self._frames.get(frame_id)

    @property
    def closed(self) -> bool:
        """True once `close` was called: no more data will come."""
        with self._cond:
            return self._closed

    def __len__(self) -> int:
        return len(self._frames)

    def __contains__(self, frame_id: int) -> bool:
        with self._cond:
            return frame_id in self._frames

    def get(self, frame_id: int) -> FrameSpeakers | None:
        return self._frames.get(frame_id)

    @property
    def max_frame_id(self) -> int:
        return max(self._frames, default=-1)

    def add(self, frame: FrameSpeakers) -> None:
        """Add one frame's data, validating what can be checked without the video.

        Raises:
            InvalidInput: duplicate frame id, negative size, or a box with negative origin.
        """
        if frame.frame_id in self:
            raise InvalidInput(f"speaker data: frame {frame.frame_id} is given twice (frame_id must be unique)")
        for k, s in enumerate(frame.speakers):
            where = f"speaker data: frame {frame.frame_id}, speaker {k}"
            for name in ("x", "y", "width", "height"):
                value = getattr(s, name)
                if value != value or value in (float("inf"), float("-inf")):
                    raise InvalidInput(f"{where}: bbox {name} is not a finite number")
            if s.width < 0 or s.height < 0:
                raise InvalidInput(f"{where}: bbox width and height must be >= 0, got {s.width}x{s.height}")
            if s.x < 0 or s.y < 0:
                raise InvalidInput(f"{where}: bbox x and y must be >= 0, got ({s.x}, {s.y})")
        with self._cond:
            self._frames[frame.frame_id] = frame
            self._highest = max(self._highest, frame.frame_id)
            self._cond.notify_all()

    def check_range(self, frame_count: int) -> None:
        """Check that no frame id received so far lies past the video's last frame.

        Raises:
            InvalidInput: naming the highest frame id and the video's frame count.
        """
        highest = self.max_frame_id
        if highest >= frame_count:
            raise InvalidInput(
                f"speaker data: frame_id {highest} is out of range: the video has {frame_count} frames"
            )

    @staticmethod
    def check_boxes(frame: FrameSpeakers, width: int, height: int) -> None:
        """Check that one frame's boxes lie inside a width x height frame.

        Raises:
            InvalidInput: naming the frame and speaker at fault.
        """
        for k, s in enumerate(frame.speakers):
            if s.is_empty:
                continue
            # Half a pixel of slack: boxes from detectors are often rounded outward.
            if s.x + s.width > width + 0.5 or s.y + s.height > height + 0.5:
                raise InvalidInput(
                    f"speaker data: frame {frame.frame_id}, speaker {k}: bbox "
                    f"({s.x:g}, {s.y:g}, {s.width:g}x{s.height:g}) extends outside the {width}x{height} frame"
                )

    @classmethod
    def from_frames(cls, frames: Iterable[FrameSpeakers]) -> SpeakerData:
        data = cls()
        for f in frames:
            data.add(f)
        return data


def frames_from_proto(messages: Iterable[Any]) -> list[FrameSpeakers]:
    """Convert wire `SpeakerInfoPerFrame` messages to our model."""
    out = []
    for m in messages:
        speakers = tuple(
            SpeakerBox(
                x=s.speaker_bbox.x,
                y=s.speaker_bbox.y,
                width=s.speaker_bbox.width,
                height=s.speaker_bbox.height,
                speaker_id=s.speaker_id if s.HasField("speaker_id") else None,
                is_speaking=s.is_speaking if s.HasField("is_speaking") else False,
            )
            for s in m.speaker_infos
        )
        out.append(FrameSpeakers(frame_id=m.frame_id, speakers=speakers, bypass=m.bypass if m.HasField("bypass") else False))
    return out


def frames_from_json(doc: Mapping[str, Any]) -> list[FrameSpeakers]:
    """Parse the JSON speaker file format; array position is the frame index.

    Raises:
        InvalidInput: the document does not follow the format (names the frame and field).
    """
    frames = doc.get("frames") if isinstance(doc, Mapping) else None
    if not isinstance(frames, list):
        raise InvalidInput('speaker data JSON: expected an object with a "frames" array')
    out = []
    for i, f in enumerate(frames):
        if not isinstance(f, Mapping):
            raise InvalidInput(f"speaker data JSON: frame {i} is not an object")
        raw = f.get("speakers", [])
        if not isinstance(raw, list):
            raise InvalidInput(f'speaker data JSON: frame {i}: "speakers" must be an array')
        speakers = []
        for k, s in enumerate(raw):
            bbox = s.get("bbox") if isinstance(s, Mapping) else None
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
                raise InvalidInput(f'speaker data JSON: frame {i}, speaker {k}: "bbox" must be [x, y, w, h] numbers')
            sid = s.get("speaker_id", s.get("face_tracker_id"))
            if sid is not None and not isinstance(sid, int):
                raise InvalidInput(f"speaker data JSON: frame {i}, speaker {k}: speaker_id must be an integer")
            speakers.append(
                SpeakerBox(*(float(v) for v in bbox), speaker_id=sid, is_speaking=bool(s.get("is_speaking", False)))
            )
        out.append(FrameSpeakers(frame_id=i, speakers=tuple(speakers), bypass=bool(f.get("bypass", False))))
    return out


def load_json_file(path: Path) -> list[FrameSpeakers]:
    """Read a speaker data JSON file.

    Raises:
        InvalidInput: unreadable file or malformed document.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"speaker data file {path}: {exc}") from exc
    return frames_from_json(doc)
