"""Face tracking: stable ids across frames (IoU or speaker id), re-detection cadence, smoothed crop squares.

The tracker receives observations (detector faces or client boxes) frame by frame and answers, for a
frame a few frames in the past, where each face's crop square is. Smoothing is a Gaussian average over
the observations around that frame (past and the bounded look-ahead) followed by a dead-zone follower:
the crop only moves once the face has moved by more than a small fraction of its size, so a still head
gives a crop that does not move at all. head_movement_speed 0 smooths over about a quarter second with
a wide dead zone; 1 smooths over a few frames with a narrow one and re-detects every frame.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from lipsync_service.core.crops import SquareBox

Box = tuple[float, float, float, float]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class TrackingParams:
    """Tracking knobs, derived from head_movement_speed and the frame rate.

    Attributes:
        sigma: Gaussian smoothing width in frames.
        radius: frames either side used for smoothing; also the look-ahead the processor must hold.
        dead_zone: the crop's centre follows only motion beyond this fraction of its side.
        dead_zone_size: the same for the crop's size (detector box sizes are noisier than positions).
        detect_every: run the detector on every n-th frame (others reuse the tracks).
        hold: frames a detected face stays after its last detection (covers cadence gaps and misses).
        match_iou: least IoU to continue a track.
        max_age: frames after which an unseen track is forgotten.
    """

    sigma: float
    radius: int
    dead_zone: float
    detect_every: int
    hold: int
    dead_zone_size: float = 0.05
    match_iou: float = 0.3
    max_age: int = 25

    @classmethod
    def for_speed(cls, head_movement_speed: int, fps: float) -> TrackingParams:
        """Parameters for head_movement_speed 0 (static/slow) or 1 (fast) at this frame rate."""
        scale = max(0.5, float(fps) / 25.0)
        if head_movement_speed >= 1:
            sigma = 1.0 * scale
            return cls(sigma=sigma, radius=max(1, math.ceil(2 * sigma)), dead_zone=0.004, dead_zone_size=0.01,
                       detect_every=1, hold=max(2, round(2 * scale)), max_age=max(5, round(10 * scale)))
        sigma = 3.0 * scale
        return cls(sigma=sigma, radius=math.ceil(2 * sigma), dead_zone=0.025, dead_zone_size=0.05,
                   detect_every=max(1, round(3 * scale)), hold=max(4, round(5 * scale)),
                   max_age=max(10, round(25 * scale)))


@dataclass(frozen=True)
class Observation:
    """A face seen in one frame.

    Attributes:
        box: (x1, y1, x2, y2) in frame pixels.
        speaker_id: the client's id for this face, if given.
        speaking: the client's is_speaking flag; None when there is no speaker data for the face.
        from_client: the box came from the client's speaker data (shown only in frames it is given).
    """

    box: Box
    speaker_id: int | None = None
    speaking: bool | None = None
    from_client: bool = False


@dataclass(frozen=True)
class TrackedFace:
    """A face in a frame as the tracker reports it.

    Attributes:
        track_id: stable id of the track.
        crop: smoothed crop square for the generator.
        box: the nearest observed box (unsmoothed), for the debug overlay.
        speaker_id: the client's id, if any.
        speaking: the client's flag at the nearest observation; None without speaker data.
    """

    track_id: int
    crop: SquareBox
    box: Box
    speaker_id: int | None
    speaking: bool | None


@dataclass
class _Track:
    track_id: int
    speaker_id: int | None
    from_client: bool
    samples: dict[int, Observation] = field(default_factory=dict)
    last_frame: int = -1
    last_box: Box = (0.0, 0.0, 0.0, 0.0)
    out_frame: int = -10**9
    out: SquareBox | None = None
    # The first frame of a later shot: the track ends before it (a new shot may show someone else there).
    ends_before: int | None = None

    def live_at(self, frame_index: int) -> bool:
        return self.ends_before is None or frame_index < self.ends_before


class FaceTracker:
    """Tracks faces across frames; memory bounded by max_age + radius frames per track."""

    def __init__(self, params: TrackingParams) -> None:
        self.params = params
        self._tracks: list[_Track] = []
        self._next_id = 1
        self._observed: list[int] = []  # frames a detection ran on (or client data was given), ascending
        self._cuts: list[int] = []  # first frames of shots after the first, ascending

    def cut(self, frame_index: int) -> None:
        """A new shot starts at frame_index: every track ends before it, and faces from there on start new tracks."""
        bisect.insort(self._cuts, frame_index)
        for t in self._tracks:
            if t.ends_before is None or t.ends_before > frame_index:
                t.ends_before = frame_index

    def _open(self) -> list[_Track]:
        """Tracks that a new observation may still continue."""
        return [t for t in self._tracks if t.ends_before is None]

    def track_for_speaker(self, speaker_id: int) -> Box | None:
        """The last box of the track that carries this client speaker id."""
        for t in self._open():
            if t.speaker_id == speaker_id:
                return t.last_box
        return None

    def last_boxes(self) -> list[Box]:
        """Last boxes of live tracks (for matching detections to speakers)."""
        return [t.last_box for t in self._open()]

    def detected_boxes(self, since_frame: int) -> list[Box]:
        """Last boxes of detector tracks seen at or after since_frame (where to look for them next)."""
        return [t.last_box for t in self._open() if not t.from_client and t.last_frame >= since_frame]

    def observe(self, frame_index: int, observations: Sequence[Observation]) -> bool:
        """Record the faces seen in frame_index.

        Frames normally come in increasing order and may be skipped (detection cadence); a skipped frame
        still inside the look-ahead may be observed later, when a detection lost a face.

        Returns:
            True when a detected face that the previous detection saw is missing from this frame: the
            caller may then detect the frames it skipped in between, to find where the face went.
        """
        k = bisect.bisect_left(self._observed, frame_index)
        previous = self._observed[k - 1] if k > 0 else None
        if k == len(self._observed) or self._observed[k] != frame_index:
            self._observed.insert(k, frame_index)
        live = [t for t in self._tracks if t.live_at(frame_index)]
        expected = {t.track_id for t in live if not t.from_client and previous in t.samples}
        used: set[int] = set()
        pending = []
        for obs in observations:
            if obs.speaker_id is not None:
                track = next((t for t in live if t.speaker_id == obs.speaker_id), None)
                if track is None:
                    track = self._new(obs, frame_index)
                self._add(track, frame_index, obs)
                used.add(track.track_id)
            else:
                pending.append(obs)
        # Greedy IoU matching, best pairs first, against tracks not already claimed in this frame.
        pairs = []
        for k, obs in enumerate(pending):
            for t in live:
                if t.track_id in used or frame_index - t.last_frame > self.params.max_age:
                    continue
                # A detector box never joins a client's track: that track is shown only in frames with a
                # client sample, so the detected face would vanish there in every other (detected) frame.
                if t.from_client and not obs.from_client:
                    continue
                score = iou(obs.box, t.last_box)
                if score >= self.params.match_iou:
                    pairs.append((score, k, t))
        pairs.sort(key=lambda p: -p[0])
        done: set[int] = set()
        for _, k, t in pairs:
            if k in done or t.track_id in used:
                continue
            self._add(t, frame_index, pending[k])
            done.add(k)
            used.add(t.track_id)
        for k, obs in enumerate(pending):
            if k not in done:
                self._add(self._new(obs, frame_index), frame_index, obs)
        horizon = self.params.max_age + self.params.radius
        self._tracks = [t for t in self._tracks if frame_index - t.last_frame <= horizon]
        return bool(expected - used)

    def _new(self, obs: Observation, frame_index: int) -> _Track:
        # A face first seen in a frame before a shot boundary already known (a skipped frame detected late).
        k = bisect.bisect_right(self._cuts, frame_index)
        track = _Track(track_id=self._next_id, speaker_id=obs.speaker_id, from_client=obs.from_client,
                       ends_before=self._cuts[k] if k < len(self._cuts) else None)
        self._next_id += 1
        self._tracks.append(track)
        return track

    @staticmethod
    def _add(track: _Track, frame_index: int, obs: Observation) -> None:
        track.samples[frame_index] = obs
        if frame_index >= track.last_frame:
            track.last_frame = frame_index
            track.last_box = obs.box

    def faces_at(self, frame_index: int) -> list[TrackedFace]:
        """Faces present in frame_index with smoothed crops.

        Call for frames in increasing order, once the frames up to frame_index + radius have been
        observed (or the stream has ended). Samples older than the smoothing window are dropped.
        """
        p = self.params
        out = []
        for t in self._tracks:
            for f in [f for f in t.samples if f < frame_index - max(p.radius, p.hold)]:
                del t.samples[f]
            if not t.live_at(frame_index):
                continue
            near = [f for f in t.samples if abs(f - frame_index) <= max(p.radius, p.hold)]
            if not near:
                continue
            nearest = min(near, key=lambda f: (abs(f - frame_index), f > frame_index))
            obs = t.samples[nearest]
            if obs.from_client or t.from_client:
                # The client lists the faces of each frame: a face is present only where it is listed.
                if nearest != frame_index:
                    continue
            elif abs(nearest - frame_index) > p.hold or not self._present(t, frame_index):
                continue
            out.append(TrackedFace(track_id=t.track_id, crop=self._smoothed(t, frame_index), box=obs.box,
                                   speaker_id=t.speaker_id, speaking=obs.speaking))
        keep_from = frame_index - max(p.radius, p.hold) - p.detect_every
        while self._observed and self._observed[0] < keep_from:
            self._observed.pop(0)
        while self._cuts and self._cuts[0] < keep_from:
            self._cuts.pop(0)
        return out

    def _found(self, t: _Track, f: int) -> bool:
        """Whether the detection run on frame f saw this track (a single miss between two hits counts)."""
        if f in t.samples:
            return True
        k = bisect.bisect_left(self._observed, f)
        before = self._observed[k - 1] if k > 0 else None
        after = self._observed[k + 1] if k + 1 < len(self._observed) else None
        return (before is not None and after is not None and before in t.samples and after in t.samples
                and after - before <= 2 * self.params.hold)

    def _present(self, t: _Track, frame_index: int) -> bool:
        """A detected face is shown in a frame when the detection runs around it agree it was there."""
        k = bisect.bisect_left(self._observed, frame_index)
        if k < len(self._observed) and self._observed[k] == frame_index:
            return self._found(t, frame_index)
        before = self._observed[k - 1] if k > 0 else None
        after = self._observed[k] if k < len(self._observed) else None
        if after is not None and not t.live_at(after):
            after = None  # the next search is in another shot: it says nothing about this track
        if before is None and after is None:
            return False
        return (before is None or self._found(t, before)) and (after is None or self._found(t, after))

    def _smoothed(self, t: _Track, frame_index: int) -> SquareBox:
        p = self.params
        total = cx = cy = side = 0.0
        for f, obs in t.samples.items():
            if abs(f - frame_index) > p.radius:
                continue
            w = math.exp(-0.5 * ((f - frame_index) / p.sigma) ** 2)
            sq = SquareBox.around_face(obs.box)
            total += w
            cx += w * sq.cx
            cy += w * sq.cy
            side += w * sq.side
        if total == 0.0:
            target = SquareBox.around_face(t.samples[min(t.samples, key=lambda f: abs(f - frame_index))].box)
        else:
            target = SquareBox(cx / total, cy / total, side / total)
        prev = t.out if t.out is not None and frame_index - t.out_frame <= p.hold + 1 else None
        if prev is not None:
            target = SquareBox(
                _follow(prev.cx, target.cx, p.dead_zone * prev.side),
                _follow(prev.cy, target.cy, p.dead_zone * prev.side),
                _follow(prev.side, target.side, p.dead_zone_size * prev.side),
            )
        t.out, t.out_frame = target, frame_index
        return target


def _follow(prev: float, target: float, dead: float) -> float:
    """Dead-zone follower: stay within `dead` of the target, moving as little as possible."""
    if target > prev + dead:
        return target - dead
    if target < prev - dead:
        return target + dead
    return prev
