"""The neural lip-sync processor: find shots and faces, read the lips, choose who is re-drawn, run the generator in
batches, and re-shape (or paste) only the mouth back into the frame, never over what covers it.

A frame passes four stages, each holding a few frames back (docs/behaviour.md#hard-footage):
1. push: shot boundary check, face detection at its cadence, into the tracker;
2. read (after the tracker's smoothing look-ahead): the landmarks of the faces that may be re-drawn, with their head
   pose and what covers their mouth;
3. decide (after a further look-ahead): which face is re-drawn and why (speaker data, the only face, active speaker
   detection, or the largest face), and how strongly (an edit fades out and back in around frames where the mouth is
   covered, turned away or unreadable, so it never switches on or off at once);
4. batch: one generator call for a few frames' faces, then the mouth edit blended in.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol

import av
import numpy as np

from lipsync_service.core import overlay
from lipsync_service.core.active_speaker import ActiveSpeaker, Choice, SpeechMouth
from lipsync_service.core.blend import Paste, copy_frame, paste_face, paste_patch
from lipsync_service.core.crops import CropRegion, extract_bgr, model_face_input, model_output_to_bgr, resize_square
from lipsync_service.core.faces import Face, FaceDetector
from lipsync_service.core.landmarks import FaceLandmarker
from lipsync_service.core.lips import LipRead, LipTracker
from lipsync_service.core.mel import WINDOW_REACH_S, MelStream
from lipsync_service.core.mouth import lip_ratios
from lipsync_service.core.pose import HeadPose
from lipsync_service.core.processor import FrameProcessor
from lipsync_service.core.select import TargetSelector, needs_detection, observations
from lipsync_service.core.shots import ShotDetector
from lipsync_service.core.tracking import FaceTracker, TrackedFace, TrackingParams, iou
from lipsync_service.errors import InternalError
from lipsync_service.inference.base import GeneratorBackend, OutputContract
from lipsync_service.job import JobConfig
from lipsync_service.media.soundtrack import Soundtrack
from lipsync_service.media.types import FrameJob, SoundtrackLevels, SpeechAudio, VideoInfo
from lipsync_service.settings import Settings

log = logging.getLogger(__name__)

# Frames gathered into one generator call at most (also bounded by the model's max batch): enough to
# keep a GPU busy, few enough that output latency stays a fraction of a second.
DEFAULT_BATCH_FRAMES = 8
# Full-frame face search at least this often (finds faces that enter); in between only around known faces.
FULL_DETECT_S = 1.0
# A search for small faces (wide shots) at the start of each shot, then this often while the normal search finds no
# face, and every SMALL_DETECT_BESIDE_S beside faces it does find (it costs about eight normal searches: 335 ms on a
# 720p frame here, 7 ms per frame at the shorter interval); a face under SMALL_FACE_MARGIN times the normal search's
# smallest counts as small, and once one is seen every full search looks for them.
SMALL_DETECT_S = 2.0
SMALL_DETECT_BESIDE_S = 8.0
SMALL_FACE_MARGIN = 1.3
# Side of the search square around a known face, in face sizes: room for fast head motion between searches.
ROI_SCALE = 2.2
# Look-ahead of the decide stage: the active speaker is judged on this much of what follows the frame too.
DECIDE_LOOKAHEAD_S = 0.5
# An edit fades in and out over this many frames around a frame where it must not be drawn.
FADE_FRAMES = 4
# At most this many faces of a frame are read to find the speaker (the largest ones).
MAX_SPEAKER_CANDIDATES = 4
# A mouth covered over at least this share of its lips is not edited at all (a smaller cover keeps its own pixels
# while the rest of the mouth is re-shaped).
OCCLUDED_LIP_SHARE = 0.15
# A frame between two frames of the same face that must not be edited, this close on both sides, is not edited
# either (no edit flickering in and out while the cover stays).
BRIDGE_FRAMES = 6
# Occluder pixels are protected with this margin (pixels, plus a share of the mouth width).
OCCLUDER_GROW_PX = 3.0
OCCLUDER_GROW_OF_WIDTH = 0.04
# A mouth narrower than this (pixels) is too small to re-shape: its few pixels would only smear.
MIN_MOUTH_PX = 8.0
STAGES = ("shots", "detect", "landmarks", "occlusion", "speaker", "features", "generator", "blend", "overlay")


class OcclusionModel(Protocol):
    """What covers a mouth: see core/occlusion.py."""

    def measure(self, image: np.ndarray, origin: tuple[int, int], raw: np.ndarray) -> Occluded: ...


class Occluded(Protocol):
    """One face's occluder in one frame (core/occlusion.Occlusion)."""

    @property
    def lip_share(self) -> float: ...

    def in_box(self, x0: int, y0: int, w: int, h: int, grow_px: float) -> np.ndarray: ...


@dataclass
class _Read:
    """One face of one frame after its landmarks were read.

    Attributes:
        face: the tracked face.
        lips: its lips, or None when the landmark model could not read them.
        safety: 1 when the mouth may be edited in full, down to 0 when it must not be (turned away, covered,
            unreadable, too small).
        problem: why safety is below 1, else None.
        occlusion: what covers the mouth, when measured.
    """

    face: TrackedFace
    lips: LipRead | None
    safety: float = 1.0
    problem: str | None = None
    occlusion: Occluded | None = None


@dataclass
class _Item:
    """One face of one frame waiting for the generator.

    Attributes:
        face: the tracked face.
        mel: float32 [80, 16] speech window of the frame.
        lips: the face's lips in this frame; None when the landmark model could not read them (then an RGB
            model's crop is pasted through the fixed lower-face ellipse).
        weight: the edit's strength (fading around frames it must not be drawn in).
        occlusion: what covers the mouth (those pixels are kept), if measured.
        region, crop: the crop square and its BGR [S, S, 3] pixels (RGB contract only).
    """

    face: TrackedFace
    mel: np.ndarray
    lips: LipRead | None
    weight: float = 1.0
    occlusion: Occluded | None = None
    region: CropRegion | None = None
    crop: np.ndarray | None = None


@dataclass
class _Pending:
    job: FrameJob
    shot: int = 0
    transition: bool = False
    detected: bool = False
    faces: list[TrackedFace] = field(default_factory=list)
    reads: dict[int, _Read] = field(default_factory=dict)
    targets: list[TrackedFace] = field(default_factory=list)
    items: list[_Item] = field(default_factory=list)
    # (label, why, face box) of the faces re-drawn, and (label, why not, face box) of chosen faces that were not.
    drawn: list[tuple[str, str, tuple[float, float, float, float]]] = field(default_factory=list)
    skipped: list[tuple[str, str, tuple[float, float, float, float]]] = field(default_factory=list)


class NeuralProcessor(FrameProcessor):
    """FrameProcessor that re-draws the mouth of the selected faces with a generator backend.

    Frames are held in bounded look-aheads (the tracker's smoothing radius, then the decide stage's) and then in a
    batch of at most `batch_frames` frames for the generator; every pushed frame comes back once, in order.
    Unchanged frames come back as the same av.VideoFrame object.
    """

    # The mel window of a frame starts at (or just before) the frame's time and reaches WINDOW_REACH_S
    # past it; 50 ms of margin covers rounding in the audio decoder's bookkeeping.
    audio_lookahead_s = WINDOW_REACH_S + 0.05

    def __init__(self, backend: GeneratorBackend, *, debug: bool = False,
                 batch_frames: int = DEFAULT_BATCH_FRAMES,
                 detector_factory: Callable[[], FaceDetector] = FaceDetector,
                 landmarker_factory: Callable[[], FaceLandmarker] = FaceLandmarker,
                 occlusion_factory: Callable[[], OcclusionModel] | None = None,
                 speaker_choice: str = "active") -> None:
        """Args:
            backend: the generator backend (owned: closed by close()).
            debug: draw the debug overlay into every frame.
            batch_frames: most frames per generator call.
            detector_factory: builds the face detector (once per processor).
            landmarker_factory: builds the face-mesh model (once per processor).
            occlusion_factory: builds the model of what covers a mouth; None: nothing is checked.
            speaker_choice: without client speaker data, "active" re-draws the face that speaks, "largest" the
                largest face.
        """
        self._backend = backend
        self._spec = backend.spec
        self._debug = debug
        self._speed = 0  # head_movement_speed of the job: set by configure()
        self._batch = max(1, min(batch_frames, self._spec.max_batch_size))
        self.release_burst = self._batch  # frames come back a generator batch at a time
        self.defers_finish = True  # each re-drawn frame's blend (see _run)
        self._detector = detector_factory()
        self._landmarker = landmarker_factory()
        self._occlusion = occlusion_factory() if occlusion_factory is not None else None
        self._active = speaker_choice == "active"
        self._shape_model = self._spec.contract is OutputContract.LIP_SHAPE
        self.stage_seconds = dict.fromkeys(STAGES, 0.0)
        self._started = False

    def configure(self, cfg: JobConfig) -> None:
        self._speed = int(cfg.head_movement_speed)

    @property
    def wants_soundtrack(self) -> bool:
        return self._active

    def start(self, video: VideoInfo, audio: SpeechAudio, soundtrack: SoundtrackLevels | None = None) -> None:
        self._fps = Fraction(video.fps)
        fps = float(self._fps)
        self._params = TrackingParams.for_speed(self._speed, fps)
        self._tracker = FaceTracker(self._params)
        self._selector = TargetSelector()
        self._shots = ShotDetector()
        self._speaker = ActiveSpeaker(fps, soundtrack, self._speech_mouth(soundtrack))
        self._mel = MelStream(audio, self._fps)
        self._lips = LipTracker(self._landmarker, fps, self._speed)
        self._decide_delay = max(FADE_FRAMES, round(DECIDE_LOOKAHEAD_S * fps)) if self._active else FADE_FRAMES
        self._track_q: deque[_Pending] = deque()
        self._decide_q: deque[_Pending] = deque()
        self._waiting: deque[_Pending] = deque()
        self._waiting_items = 0
        self._done: list[FrameJob] = []
        # Per track: frame index -> safety (1 editable .. 0 not), for the fades.
        self._safety: dict[int, dict[int, float]] = {}
        self._since_detect = 10**9
        self._last_full = -(10**9)
        self._full_every = max(1, round(fps * FULL_DETECT_S))
        self._small_every = max(1, round(fps * SMALL_DETECT_S))
        self._small_every_beside = max(1, round(fps * SMALL_DETECT_BESIDE_S))
        self._last_small = -(10**9)
        self._small_faces = False
        self.stage_seconds = dict.fromkeys(STAGES, 0.0)
        self._started = True

    def _speech_mouth(self, soundtrack: SoundtrackLevels | None) -> SpeechMouth | None:
        """The soundtrack's expected mouth opening per frame, when the soundtrack has samples to read."""
        if not isinstance(soundtrack, Soundtrack):
            return None
        try:
            return SpeechMouth(soundtrack, self._fps)
        except InternalError as exc:
            log.warning("finding the speaker from the soundtrack's loudness only: %s", exc)
            return None

    @property
    def lookahead_frames(self) -> int:
        """Frames held back before a frame is processed (smoothing, then the decide stage)."""
        return self._params.radius + self._decide_delay

    @property
    def model_info(self) -> str:
        return self._spec.description or self._spec.name

    def _timed(self, stage: str, start: float) -> None:
        self.stage_seconds[stage] += time.perf_counter() - start

    # Stage 1: shots and detection ----------------------------------------------------------------

    def push(self, job: FrameJob) -> list[FrameJob]:
        if not self._started:
            raise InternalError("NeuralProcessor.push called before start")
        if job.frame.format.name != "yuv420p":
            # The pipeline hands over yuv420p; anything else is converted so the plane arithmetic holds.
            job.frame = job.frame.reformat(format="yuv420p")
        pending = _Pending(job)
        if not _is_bypass(job):
            t0 = time.perf_counter()
            shot = self._shots.observe(job.frame, job.index)
            self._timed("shots", t0)
            pending.shot, pending.transition = shot.shot, shot.transition
            if shot.marked_from is not None:
                # A gradual transition was recognised only now: the frames of it still held are left unedited.
                for held in (*self._decide_q, *self._track_q):
                    if held.job.index >= shot.marked_from:
                        held.transition = True
            if shot.cut:
                self._tracker.cut(job.index)
                # Search the whole new shot at once: who is in it is unknown.
                self._last_full = self._last_small = -(10**9)
                self._since_detect = 10**9
            if not pending.transition:
                self._observe(job)
        pending.detected = self._since_detect == 0
        self._track_q.append(pending)
        while len(self._track_q) > self._params.radius:
            self._read(self._track_q.popleft())
        self._release_head()
        out, self._done = self._done, []
        return out

    def flush(self) -> list[FrameJob]:
        if not self._started:
            return []
        while self._track_q:
            self._read(self._track_q.popleft())
        while self._decide_q:
            self._decide(self._decide_q.popleft())
        self._run()
        out, self._done = self._done, []
        return out

    def _detect(self, frame: av.VideoFrame, index: int) -> list:
        """Search around the faces tracked so far; the whole frame once a second, at the start, after a cut, or
        when a tracked face is not found where it was."""
        t0 = time.perf_counter()
        try:
            boxes = self._tracker.detected_boxes(index - self._params.hold - self._params.detect_every)
            if boxes and index - self._last_full < self._full_every:
                rois = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, ROI_SCALE * max(b[2] - b[0], b[3] - b[1]))
                        for b in boxes]
                faces = self._detector.detect_frame(frame, rois)
                if len(faces) >= len(boxes):
                    return faces
            self._last_full = index
            faces = self._detector.detect_frame(frame)
            every = self._small_every_beside if faces else self._small_every
            if self._small_faces or index - self._last_small >= every:
                # Wide shots: faces under the normal search's smallest size. Once some are seen, every full search
                # looks for them; otherwise only now and then (it costs several normal searches).
                self._last_small = index
                small = self._detector.detect_frame(frame, small=True)
                limit = SMALL_FACE_MARGIN * self._detector.smallest_face_px(frame.width, frame.height)
                self._small_faces = any(f.height < limit for f in small)
                faces = _merge(faces, small)
            return faces
        finally:
            self._timed("detect", t0)

    def _observe(self, job: FrameJob) -> None:
        """Feed this frame's faces to the tracker: client boxes, or detection at the cadence."""
        speakers = job.speakers
        needs = needs_detection(speakers)
        # A client box of all zeros asks for detection in exactly this frame; otherwise the cadence decides.
        zero_box = speakers is not None and bool(speakers.speakers) and needs
        run = zero_box or (needs and (self._since_detect + 1 >= self._params.detect_every
                                      or not self._tracker.last_boxes()))
        obs = observations(speakers, (lambda: self._detect(job.frame, job.index)) if run else None, self._tracker)
        self._since_detect = 0 if run else self._since_detect + 1
        if obs is None:
            return
        lost = self._tracker.observe(job.index, obs)
        if lost and run:
            # A face vanished since the last detection: detect the frames skipped in between (still in
            # the look-ahead) so it is drawn exactly in the frames it is in.
            for pending in reversed(self._track_q):
                if pending.detected:
                    break
                skipped = pending.job
                if needs_detection(skipped.speakers) and not _is_bypass(skipped) and not pending.transition:
                    self._tracker.observe(skipped.index, observations(
                        skipped.speakers, lambda f=skipped.frame, i=skipped.index: self._detect(f, i), self._tracker))
                pending.detected = True

    # Stage 2: read the faces that may be re-drawn -------------------------------------------------

    def _read(self, pending: _Pending) -> None:
        job = pending.job
        if not _is_bypass(job) and not pending.transition:
            pending.faces = self._tracker.faces_at(job.index)
        if pending.faces:
            self._lips.retain({f.track_id for f in pending.faces})
        for face in self._candidates(pending):
            pending.reads[face.track_id] = self._read_face(pending, face)
        if self._active and not _has_client_faces(job) and len(pending.faces) > 1:
            t0 = time.perf_counter()
            openings = {t: lip_ratios(r.lips.raw)[0] for t, r in pending.reads.items() if r.lips is not None}
            self._speaker.observe(job.index, job.source_index, pending.shot, openings)
            self._timed("speaker", t0)
        self._decide_q.append(pending)
        while len(self._decide_q) > self._decide_delay:
            self._decide(self._decide_q.popleft())

    def _candidates(self, pending: _Pending) -> list[TrackedFace]:
        """The faces whose lips are read in this frame: those the client flags speaking, else the one the rule picks,
        else (finding the speaker among several) the largest few."""
        job, faces = pending.job, pending.faces
        if not faces:
            return []
        if _has_client_faces(job):
            return [f for f in faces if f.speaking]
        if not self._active or len(faces) == 1:
            return self._selector.select(faces, job.speakers)
        return sorted(faces, key=lambda f: -f.crop.side)[:MAX_SPEAKER_CANDIDATES]

    def _read_face(self, pending: _Pending, face: TrackedFace) -> _Read:
        job = pending.job
        t0 = time.perf_counter()
        lips = self._lips.read(job.frame, job.index, face.track_id, face.box)
        self._timed("landmarks", t0)
        read = _Read(face=face, lips=lips)
        if lips is None:
            read.safety, read.problem = 0.0, "unreadable"
        else:
            mouth = float(np.linalg.norm(lips.raw[61] - lips.raw[291]))
            weight = HeadPose.of(lips.mesh).edit_weight()
            if mouth < MIN_MOUTH_PX:
                read.safety, read.problem = 0.0, "too small"
            elif weight < 1.0:
                read.safety, read.problem = weight, "turned away"
            if self._occlusion is not None and read.safety > 0:
                t0 = time.perf_counter()
                read.occlusion = self._occlusion.measure(lips.image, lips.origin, lips.raw)
                self._timed("occlusion", t0)
                if read.occlusion.lip_share >= OCCLUDED_LIP_SHARE:
                    read.safety, read.problem = 0.0, "mouth covered"
        self._safety.setdefault(face.track_id, {})[job.index] = read.safety
        return read

    # Stage 3: decide who is re-drawn, and how strongly ------------------------------------------

    def _decide(self, pending: _Pending) -> None:
        job = pending.job
        if not _is_bypass(job) and not pending.transition and pending.faces:
            t0 = time.perf_counter()
            chosen = self._choose(pending)
            self._timed("speaker", t0)
            pending.targets = [face for face, _ in chosen]
            mel = None
            for face, why in chosen:
                label = _label(face)
                read = pending.reads.get(face.track_id)
                weight = self._fade(face.track_id, job.index)
                if read is None or read.lips is None:
                    if self._shape_model or read is None:
                        pending.skipped.append((label, "unreadable", face.box))
                        continue
                    weight = 1.0  # an RGB model's crop goes through the fixed lower-face ellipse, as before
                elif weight <= 0.0:
                    pending.skipped.append((label, read.problem or "fading", face.box))
                    continue
                if mel is None:
                    t0 = time.perf_counter()
                    mel = self._mel.window(job.index)
                    self._timed("features", t0)
                item = _Item(face=face, mel=mel, lips=read.lips if read is not None else None, weight=weight,
                             occlusion=read.occlusion if read is not None else None)
                if not self._shape_model:
                    item.region = face.crop.pixel_region()
                    item.crop = resize_square(extract_bgr(job.frame, item.region), self._spec.face_size)
                pending.items.append(item)
                pending.drawn.append((label, why, face.box))
            # A frame's faces go into one call: run what waits first if they would not fit beside it.
            if self._waiting_items and self._waiting_items + len(pending.items) > self._batch:
                self._run()
        self._forget_safety(job.index)
        self._waiting.append(pending)
        self._waiting_items += len(pending.items)
        if self._waiting_items >= self._batch:
            self._run()

    def _choose(self, pending: _Pending) -> list[tuple[TrackedFace, str]]:
        """The faces to re-draw in a frame and why."""
        job, faces = pending.job, pending.faces
        if _has_client_faces(job) or (job.speakers is not None and job.speakers.bypass):
            return [(f, "speaker data") for f in self._selector.select(faces, job.speakers)]
        if not self._active or len(faces) == 1:
            why = "only face" if len(faces) == 1 else "largest face"
            return [(f, why) for f in faces if f.track_id in pending.reads] or [
                (f, why) for f in self._selector.select(faces, job.speakers)]
        candidates = [(f.track_id, f.crop.side) for f in faces if f.track_id in pending.reads]
        choice: Choice | None = self._speaker.choose(job.index, candidates)
        if choice is None:
            return []
        face = next(f for f in faces if f.track_id == choice.track_id)
        why = choice.reason if choice.score is None else f"{choice.reason} {choice.score:.2f}"
        return [(face, why)]

    def _fade(self, track_id: int, index: int) -> float:
        """The edit's weight in frame `index`: its own safety, lowered near frames where this face must not be
        edited so the edit fades out before them and back in after them (the look-ahead holds the later ones)."""
        known = self._safety.get(track_id, {})
        weight = known.get(index, 1.0)
        before = any(known.get(index - k, 1.0) <= 0.0 for k in range(1, BRIDGE_FRAMES + 1))
        if before and any(known.get(index + k, 1.0) <= 0.0 for k in range(1, BRIDGE_FRAMES + 1)):
            return 0.0
        for k in range(1, FADE_FRAMES + 1):
            ramp = k / (FADE_FRAMES + 1)
            for j in (index - k, index + k):
                s = known.get(j)
                if s is not None:
                    weight = min(weight, s + ramp)
        return max(0.0, min(1.0, weight))

    def _forget_safety(self, index: int) -> None:
        oldest = index - max(FADE_FRAMES, BRIDGE_FRAMES)
        for track_id in list(self._safety):
            known = self._safety[track_id]
            for j in [j for j in known if j < oldest]:
                del known[j]
            if not known:
                del self._safety[track_id]

    # Stage 4: generate and blend -------------------------------------------------------------------

    def _generate(self, items: list[_Item]) -> list[np.ndarray]:
        """One generator call for all waiting faces (the backend splits at its own batch limit).

        Returns per face: the model's lip-shape row [C] (LIP_SHAPE contract: opening_z, width_z and, when the model
        has 5 columns, closure, tuck, round; passed on unchanged) or the re-drawn BGR crop (RGB).
        """
        spec = self._spec
        t0 = time.perf_counter()
        mel = np.stack([i.mel for i in items])[:, None].astype(np.float32)
        face = None
        if not self._shape_model:
            face = model_face_input([i.crop for i in items if i.crop is not None], channel_order=spec.channel_order)
        self._timed("features", t0)
        t0 = time.perf_counter()
        out = self._backend.infer(face, mel)
        self._timed("generator", t0)
        expected = (len(items), *spec.output_dims)
        if tuple(out.shape) != expected:
            raise InternalError(f"generator returned shape {tuple(out.shape)}, expected {expected}")
        if self._shape_model:
            return list(np.asarray(out, np.float64))
        return list(model_output_to_bgr(out, spec.channel_order))

    def _apply(self, frame: av.VideoFrame, item: _Item, generated: np.ndarray) -> Paste | None:
        """Write one face's result into the frame copy: the re-shaped mouth, or the model's crop through the
        mouth region (the fixed lower-face ellipse when the lips could not be read), weighted by the fade and
        never over an occluder's pixels."""
        if self._shape_model:
            assert item.lips is not None
            edit = LipTracker.reshape(item.lips, generated, (frame.width, frame.height))
            if edit is None:
                return None
            weights = self._protect(edit.alpha * np.float32(item.weight), item, edit.x, edit.y)
            return paste_patch(frame, edit.x, edit.y, edit.patch, weights)
        assert item.region is not None
        region = item.region
        alpha: np.ndarray | None = None
        if item.lips is not None:
            alpha = LipTracker.mouth_alpha(item.lips, region.x, region.y, region.side)
            # The model re-draws only the crop's lower half (its input masks it): nothing above is pasted.
            alpha[: region.side // 2] = 0.0
            alpha = self._protect(alpha * np.float32(item.weight), item, region.x, region.y)
        return paste_face(frame, region, generated, alpha=alpha)

    @staticmethod
    def _protect(alpha: np.ndarray, item: _Item, x: int, y: int) -> np.ndarray:
        """Blend weights with an occluder's pixels (grown by a margin) set to 0: they keep the source's values."""
        if item.occlusion is None or item.lips is None:
            return alpha
        h, w = alpha.shape
        mouth = float(np.linalg.norm(item.lips.raw[61] - item.lips.raw[291]))
        cover = item.occlusion.in_box(x, y, w, h, OCCLUDER_GROW_PX + OCCLUDER_GROW_OF_WIDTH * mouth)
        return (alpha * (1.0 - cover)).astype(np.float32)

    def _run(self) -> None:
        """Run the generator on every waiting face and move all waiting frames to the output, each with its blend
        left to do (FrameJob.finish): the pipeline runs it on another thread, beside this one's next frames."""
        items = [item for p in self._waiting for item in p.items]
        generated = self._generate(items) if items else []
        k = 0
        while self._waiting:
            pending = self._waiting.popleft()
            job = pending.job
            if pending.items:
                rows = generated[k:k + len(pending.items)]
                k += len(pending.items)
                job.changed = True
                job.meta["lipsync_regions"] = [item.face.crop.pixel_region() for item in pending.items]
                job.finish = functools.partial(self._blend, job, pending.items, rows)
            self._finish(pending)
        self._waiting_items = 0

    def _blend(self, job: FrameJob, items: list[_Item], rows: list[np.ndarray]) -> None:
        """Paste the frame's edits into a copy of its picture (on the pipeline's finishing thread: it reads only
        this frame's own items and never the processor's running state)."""
        t0 = time.perf_counter()
        frame = copy_frame(job.frame)
        pastes = []
        for item, row in zip(items, rows, strict=True):
            paste = self._apply(frame, item, row)
            if paste is not None:
                pastes.append(paste)
        job.frame = frame
        # Exactly where the frame may differ from its input (for checks and debugging).
        job.meta["lipsync_pastes"] = pastes
        self._timed("blend", t0)

    def _release_head(self) -> None:
        """Frames at the head of the queue with nothing to generate go out without waiting for a batch."""
        while self._waiting and not self._waiting[0].items:
            self._finish(self._waiting.popleft())

    def _finish(self, pending: _Pending) -> None:
        job = pending.job
        if not _is_bypass(job):
            # Counted by the pipeline (JobResult): frames without a face, frames whose faces were not re-drawn,
            # which face was re-drawn and why, and why a chosen face was not.
            job.meta["faces_found"] = len(pending.faces)
            job.meta["faces_lipsynced"] = len(pending.items)
            job.meta["lipsync_drawn"] = pending.drawn
            job.meta["lipsync_skipped"] = pending.skipped
            job.meta["shot"] = pending.shot
            job.meta["transition"] = pending.transition
        if self._debug:
            faces, targets = pending.faces, pending.targets

            def annotate(blend: Callable[[], None] | None = job.finish) -> None:
                if blend is not None:
                    blend()  # the overlay draws on the blended picture and reads where it was pasted
                t0 = time.perf_counter()
                overlay.annotate(job, faces, targets)
                self._timed("overlay", t0)

            job.finish = annotate
        self._done.append(job)

    def close(self) -> None:
        self._track_q = deque()
        self._decide_q = deque()
        self._waiting = deque()
        self._backend.close()


def _merge(faces: list[Face], more: list[Face]) -> list[Face]:
    """Faces of two searches of one frame, each face once (the one with the better score where boxes overlap)."""
    out = list(faces)
    for face in more:
        twin = next((k for k, f in enumerate(out) if iou(f.box, face.box) > 0.3), None)
        if twin is None:
            out.append(face)
        elif face.score > out[twin].score:
            out[twin] = face
    return out


def _is_bypass(job: FrameJob) -> bool:
    # The pipeline routes bypass frames around the processor; this guards against one arriving anyway.
    return job.bypass or (job.speakers is not None and job.speakers.bypass)


def _has_client_faces(job: FrameJob) -> bool:
    """The client's speaker data lists this frame's faces (who speaks is then the client's word)."""
    return job.speakers is not None and bool(job.speakers.speakers)


def _label(face: TrackedFace) -> str:
    return f"S{face.speaker_id if face.speaker_id is not None else face.track_id}"


def build_neural_processor(settings: Settings, backend: GeneratorBackend | None = None) -> NeuralProcessor:
    """The lip-sync processor with the generator backend the settings select.

    Args:
        settings: the service settings.
        backend: a backend to use instead of building one (e.g. a server's shared backend); the processor
            closes it with itself, so pass a handle whose close() releases only this processor's share.

    Raises:
        InferenceUnavailable: the backend cannot be built (message says why).
    """
    if backend is None:
        from lipsync_service.inference import build_backend

        backend = build_backend(settings)
    try:
        occlusion = None
        if settings.occlusion_check:
            from lipsync_service.core.occlusion import OcclusionDetector

            occlusion = OcclusionDetector
        return NeuralProcessor(backend, debug=settings.debug_mode,
                               batch_frames=min(DEFAULT_BATCH_FRAMES, settings.max_batch_size),
                               speaker_choice=settings.speaker_choice, occlusion_factory=occlusion)
    except BaseException:
        backend.close()
        raise
