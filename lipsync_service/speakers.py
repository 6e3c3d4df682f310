"""Per-frame speaker data: model, parsing from the wire and from JSON, validation."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lipsync_service.errors import InputTimeout, InvalidInput

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class FrameSpeakers:
    """Speaker data of one frame. An empty list means: detect faces yourself."""

    frame_id: int
    speakers: tuple[SpeakerBox, ...] = ()
    bypass: bool = False

    @property
    def needs_detection(self) -> bool:
        return not self.speakers or any(s.is_empty for s in self.speakers)


# What one frame's data costs in memory once stored (object, its tuple, its index entry), and each speaker box
# on top: measured with tracemalloc on CPython 3.11 (140 bytes, +112 to +150 per box), rounded up.
FRAME_BYTES = 150
SPEAKER_BYTES = 150


def estimated_bytes(frames: Iterable[FrameSpeakers]) -> int:
    """Memory the frames will take once stored in a SpeakerData (for the call's memory budget)."""
    return sum(FRAME_BYTES + SPEAKER_BYTES * len(f.speakers) for f in frames)


def _out_of_range(frame_id: int, frame_count: int) -> str:
    return f"speaker data: frame_id {frame_id} is out of range: the video has {frame_count} frames"


def _check_values(frame: FrameSpeakers) -> None:
    """Check what can be checked without the video: finite box values, no negative size or origin.

    Raises:
        InvalidInput: naming the frame and speaker at fault.
    """
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


class SpeakerData:
    """All speaker data of a job, indexed by input frame number.

    Thread-safe: the RPC adds batches while the pipeline thread waits for the frame it needs.

    Each frame's data is decided once, by `wait_for`: the frame's own data, or none because data for a
    later frame arrived first or the input ended. A frame decided to have none keeps none even if its
    data turns up later, so every use of a frame (first pass, video extension) sees the same data
    whatever the timing of the client's batches. Once the video's frame count is known
    (`set_frame_count`), data for frames past it is refused: what was received at once, later batches
    as they arrive.
    """

    def __init__(self) -> None:
        self._frames: dict[int, FrameSpeakers] = {}
        self._highest = -1
        self._closed = False
        self._frame_count: int | None = None
        # Frames decided to have no data while input was still open; data arriving for them later is ignored.
        self._absent: set[int] = set()
        self._warned_late = False
        self._cond = threading.Condition()
        #: Memory the stored frames take, estimated (estimated_bytes).
        self.held_bytes = 0

    def close(self) -> None:
        """No more data will come: waiters return what there is."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _decided(self, frame_id: int) -> bool:
        # Clients send frames in order: data for a later frame means this one was not given.
        return frame_id in self._frames or self._highest > frame_id or self._closed or frame_id in self._absent

    def _lookup(self, frame_id: int) -> FrameSpeakers | None:
        return None if frame_id in self._absent else self._frames.get(frame_id)

    def wait_for(self, frame_id: int, timeout: float | None = None) -> FrameSpeakers | None:
        """The data of frame_id once it is decided, waiting until then.

        The decision and the data it returns are taken together, under the lock: a batch landing at any
        moment cannot make a frame count as decided without its data.

        Returns:
            The frame's data; None when the frame has none (data for a later frame came first, or the
            input ended without it).

        Raises:
            InputTimeout: not decided within `timeout` seconds (nothing for this or a later frame yet, and
                the input is still open).
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._decided(frame_id), timeout):
                raise InputTimeout(f"speaker data: frame {frame_id} not decided after waiting {timeout:g} s")
            data = self._lookup(frame_id)
            if data is None and not self._closed:
                self._absent.add(frame_id)
            return data

    def set_frame_count(self, frame_count: int) -> None:
        """The video has `frame_count` input frames: refuse data for frames past it, now and on arrival.

        Raises:
            InvalidInput: data already received names a frame_id >= frame_count (the highest is named).
        """
        with self._cond:
            self._frame_count = frame_count
            highest = self._highest
        if highest >= frame_count:
            raise InvalidInput(_out_of_range(highest, frame_count))

    @property
    def frame_count(self) -> int | None:
        """The video's frame count once known (`set_frame_count`), else None."""
        with self._cond:
            return self._frame_count

    @property
    def closed(self) -> bool:
        """True once `close` was called: no more data will come."""
        with self._cond:
            return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._frames)

    def __contains__(self, frame_id: int) -> bool:
        with self._cond:
            return frame_id in self._frames

    def get(self, frame_id: int) -> FrameSpeakers | None:
        """The frame's data as known now, without waiting (None for a frame decided to have none)."""
        with self._cond:
            return self._lookup(frame_id)

    @property
    def max_frame_id(self) -> int:
        """The highest frame_id received, -1 before any."""
        with self._cond:
            return self._highest

    def add(self, frame: FrameSpeakers) -> None:
        """Add one frame's data; see `add_all`."""
        self.add_all([frame])

    def add_all(self, frames: Iterable[FrameSpeakers]) -> None:
        """Add a batch of frames: all of them, or none when one is refused.

        Raises:
            InvalidInput: a frame_id given twice (in the batch or before it), a box value that is not finite,
                a negative size or origin, or a frame_id past the video's frame count once that is known.
        """
        batch = list(frames)
        for frame in batch:
            _check_values(frame)
        with self._cond:
            ids: set[int] = set()
            for frame in batch:
                if frame.frame_id in self._frames or frame.frame_id in ids:
                    raise InvalidInput(
                        f"speaker data: frame {frame.frame_id} is given twice (frame_id must be unique)"
                    )
                ids.add(frame.frame_id)
            if not ids:
                return
            highest = max(ids)
            if self._frame_count is not None and highest >= self._frame_count:
                raise InvalidInput(_out_of_range(highest, self._frame_count))
            late = sorted(ids & self._absent)
            for frame in batch:
                self._frames[frame.frame_id] = frame
            self.held_bytes += estimated_bytes(batch)
            self._highest = max(self._highest, highest)
            self._cond.notify_all()
            warn = bool(late) and not self._warned_late
            self._warned_late = self._warned_late or warn
        if warn:
            log.warning("speaker data for frame %d arrived after data for a later frame, once the video had reached "
                        "it: ignored (send frames in increasing frame_id order, before the video)", late[0])

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
        data.add_all(frames)
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
        bypass = m.bypass if m.HasField("bypass") else False
        out.append(FrameSpeakers(frame_id=m.frame_id, speakers=speakers, bypass=bypass))
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
            x, y, w, h = (float(v) for v in bbox)
            speakers.append(SpeakerBox(x, y, w, h, speaker_id=sid, is_speaking=bool(s.get("is_speaking", False))))
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
