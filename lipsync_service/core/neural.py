"""The neural lip-sync processor: detect and track faces, read their lips, run the generator in batches, and
re-shape (or paste) only the mouth back into the frame."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from lipsync_service.core import overlay
from lipsync_service.core.blend import Paste, copy_frame, paste_face, paste_patch
from lipsync_service.core.crops import CropRegion, extract_bgr, model_face_input, model_output_to_bgr, resize_square
from lipsync_service.core.faces import FaceDetector
from lipsync_service.core.landmarks import FaceLandmarker
from lipsync_service.core.lips import LipRead, LipTracker
from lipsync_service.core.mel import WINDOW_REACH_S, MelStream
from lipsync_service.core.processor import FrameProcessor
from lipsync_service.core.select import TargetSelector, needs_detection, observations
from lipsync_service.core.tracking import FaceTracker, TrackedFace, TrackingParams
from lipsync_service.errors import InternalError
from lipsync_service.inference.base import LIP_SHAPE_SIZE, GeneratorBackend, OutputContract
from lipsync_service.job import JobConfig
from lipsync_service.media.types import FrameJob, SpeechAudio, VideoInfo
from lipsync_service.settings import Settings

# Frames gathered into one generator call at most (also bounded by the model's max batch): enough to
# keep a GPU busy, few enough that output latency stays a fraction of a second.
DEFAULT_BATCH_FRAMES = 8
# Full-frame face search at least this often (finds faces that enter); in between only around known faces.
FULL_DETECT_S = 1.0
# Side of the search square around a known face, in face sizes: room for fast head motion between searches.
ROI_SCALE = 2.2
STAGES = ("detect", "landmarks", "features", "generator", "blend", "overlay")


@dataclass
class _Item:
    """One face of one frame waiting for the generator.

    Attributes:
        face: the tracked face.
        mel: float32 [80, 16] speech window of the frame.
        lips: the face's lips in this frame; None when the landmark model could not read them (then an RGB
            model's crop is pasted through the fixed lower-face ellipse).
        region, crop: the crop square and its BGR [S, S, 3] pixels (RGB contract only).
    """

    face: TrackedFace
    mel: np.ndarray
    lips: LipRead | None
    region: CropRegion | None = None
    crop: np.ndarray | None = None


@dataclass
class _Pending:
    job: FrameJob
    detected: bool = False
    faces: list[TrackedFace] = field(default_factory=list)
    targets: list[TrackedFace] = field(default_factory=list)
    items: list[_Item] = field(default_factory=list)


class NeuralProcessor(FrameProcessor):
    """FrameProcessor that re-draws the mouth of the selected faces with a generator backend.

    Frames are held in a bounded look-ahead (the tracker's smoothing radius) and then in a batch of at
    most `batch_frames` frames for the generator; every pushed frame comes back once, in order.
    Unchanged frames come back as the same av.VideoFrame object.
    """

    # The mel window of a frame starts at (or just before) the frame's time and reaches WINDOW_REACH_S
    # past it; 50 ms of margin covers rounding in the audio decoder's bookkeeping.
    audio_lookahead_s = WINDOW_REACH_S + 0.05

    def __init__(self, backend: GeneratorBackend, *, debug: bool = False,
                 batch_frames: int = DEFAULT_BATCH_FRAMES,
                 detector_factory: Callable[[], FaceDetector] = FaceDetector,
                 landmarker_factory: Callable[[], FaceLandmarker] = FaceLandmarker) -> None:
        """Args:
            backend: the generator backend (owned: closed by close()).
            debug: draw the debug overlay into every frame.
            batch_frames: most frames per generator call.
            detector_factory: builds the face detector (once per processor).
            landmarker_factory: builds the face-mesh model (once per processor).
        """
        self._backend = backend
        self._spec = backend.spec
        self._debug = debug
        self._speed = 0  # head_movement_speed of the job: set by configure()
        self._batch = max(1, min(batch_frames, self._spec.max_batch_size))
        self._detector = detector_factory()
        self._landmarker = landmarker_factory()
        self._shape_model = self._spec.contract is OutputContract.LIP_SHAPE
        self.stage_seconds = dict.fromkeys(STAGES, 0.0)
        self._started = False

    def configure(self, cfg: JobConfig) -> None:
        self._speed = int(cfg.head_movement_speed)

    def start(self, video: VideoInfo, audio: SpeechAudio) -> None:
        self._fps = Fraction(video.fps)
        self._params = TrackingParams.for_speed(self._speed, float(self._fps))
        self._tracker = FaceTracker(self._params)
        self._selector = TargetSelector()
        self._mel = MelStream(audio, self._fps)
        self._lips = LipTracker(self._landmarker, float(self._fps), self._speed)
        self._lookahead: deque[_Pending] = deque()
        self._waiting: deque[_Pending] = deque()
        self._waiting_items = 0
        self._done: list[FrameJob] = []
        self._since_detect = 10**9
        self._last_full = -(10**9)
        self._full_every = max(1, round(float(self._fps) * FULL_DETECT_S))
        self.stage_seconds = dict.fromkeys(STAGES, 0.0)
        self._started = True

    @property
    def lookahead_frames(self) -> int:
        """Frames held back for smoothing before a frame is processed."""
        return self._params.radius

    @property
    def model_info(self) -> str:
        return self._spec.description or self._spec.name

    def _timed(self, stage: str, start: float) -> None:
        self.stage_seconds[stage] += time.perf_counter() - start

    def _detect(self, frame: av.VideoFrame, index: int) -> list:
        """Search around the faces tracked so far; the whole frame once a second, at the start, or when
        a tracked face is not found where it was."""
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
            return self._detector.detect_frame(frame)
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
            for pending in reversed(self._lookahead):
                if pending.detected:
                    break
                skipped = pending.job
                if needs_detection(skipped.speakers) and not _is_bypass(skipped):
                    self._tracker.observe(skipped.index, observations(
                        skipped.speakers, lambda f=skipped.frame, i=skipped.index: self._detect(f, i), self._tracker))
                pending.detected = True

    def push(self, job: FrameJob) -> list[FrameJob]:
        if not self._started:
            raise InternalError("NeuralProcessor.push called before start")
        if job.frame.format.name != "yuv420p":
            # The pipeline hands over yuv420p; anything else is converted so the plane arithmetic holds.
            job.frame = job.frame.reformat(format="yuv420p")
        if not _is_bypass(job):
            self._observe(job)
        self._lookahead.append(_Pending(job, detected=self._since_detect == 0))
        while len(self._lookahead) > self._params.radius:
            self._prepare(self._lookahead.popleft())
        self._release_head()
        out, self._done = self._done, []
        return out

    def flush(self) -> list[FrameJob]:
        if not self._started:
            return []
        while self._lookahead:
            self._prepare(self._lookahead.popleft())
        self._run()
        out, self._done = self._done, []
        return out

    def _prepare(self, pending: _Pending) -> None:
        """Decide the faces of a frame whose look-ahead is complete, and crop them for the generator."""
        job = pending.job
        if not _is_bypass(job):
            pending.faces = self._tracker.faces_at(job.index)
            pending.targets = self._selector.select(pending.faces, job.speakers)
        if pending.faces:
            self._lips.retain({f.track_id for f in pending.faces})
        if pending.targets:
            t0 = time.perf_counter()
            mel = self._mel.window(job.index)
            self._timed("features", t0)
            size = self._spec.face_size
            for face in pending.targets:
                t0 = time.perf_counter()
                lips = self._lips.read(job.frame, job.index, face.track_id, face.box)
                self._timed("landmarks", t0)
                if lips is None and self._shape_model:
                    continue  # nothing to re-shape: the face stays as it is (LipTracker logs it)
                t0 = time.perf_counter()
                item = _Item(face=face, mel=mel, lips=lips)
                if not self._shape_model:
                    item.region = face.crop.pixel_region()
                    item.crop = resize_square(extract_bgr(job.frame, item.region), size)
                pending.items.append(item)
                self._timed("features", t0)
            # A frame's faces go into one call: run what waits first if they would not fit beside it.
            if self._waiting_items and self._waiting_items + len(pending.items) > self._batch:
                self._run()
        self._waiting.append(pending)
        self._waiting_items += len(pending.items)
        if self._waiting_items >= self._batch:
            self._run()

    def _generate(self, items: list[_Item]) -> list[np.ndarray]:
        """One generator call for all waiting faces (the backend splits at its own batch limit).

        Returns per face: the target lip shape [2] (LIP_SHAPE contract) or the re-drawn BGR crop (RGB).
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
        if self._shape_model:
            expected: tuple[int, ...] = (len(items), LIP_SHAPE_SIZE)
        else:
            expected = (len(items), 3, spec.face_size, spec.face_size)
        if tuple(out.shape) != expected:
            raise InternalError(f"generator returned shape {tuple(out.shape)}, expected {expected}")
        if self._shape_model:
            return list(np.asarray(out, np.float64))
        return list(model_output_to_bgr(out, spec.channel_order))

    def _apply(self, frame: av.VideoFrame, item: _Item, generated: np.ndarray) -> Paste | None:
        """Write one face's result into the frame copy: the re-shaped mouth, or the model's crop through the
        mouth region (the fixed lower-face ellipse when the lips could not be read)."""
        if self._shape_model:
            assert item.lips is not None
            edit = LipTracker.reshape(item.lips, generated, (frame.width, frame.height))
            return None if edit is None else paste_patch(frame, edit.x, edit.y, edit.patch, edit.alpha)
        assert item.region is not None
        alpha = None
        if item.lips is not None:
            region = item.region
            alpha = LipTracker.mouth_alpha(item.lips, region.x, region.y, region.side)
            # The model re-draws only the crop's lower half (its input masks it): nothing above is pasted.
            alpha[: region.side // 2] = 0.0
        return paste_face(frame, item.region, generated, alpha=alpha)

    def _run(self) -> None:
        """Run the generator on every waiting face, blend, and move all waiting frames to the output."""
        items = [item for p in self._waiting for item in p.items]
        generated = self._generate(items) if items else []
        k = 0
        while self._waiting:
            pending = self._waiting.popleft()
            job = pending.job
            if pending.items:
                t0 = time.perf_counter()
                frame = copy_frame(job.frame)
                pastes = []
                for item in pending.items:
                    paste = self._apply(frame, item, generated[k])
                    k += 1
                    if paste is not None:
                        pastes.append(paste)
                job.frame = frame
                job.changed = True
                # Exactly where the frame may differ from its input (for checks and debugging).
                job.meta["lipsync_pastes"] = pastes
                job.meta["lipsync_regions"] = [item.face.crop.pixel_region() for item in pending.items]
                self._timed("blend", t0)
            self._finish(pending)
        self._waiting_items = 0

    def _release_head(self) -> None:
        """Frames at the head of the queue with nothing to generate go out without waiting for a batch."""
        while self._waiting and not self._waiting[0].items:
            self._finish(self._waiting.popleft())

    def _finish(self, pending: _Pending) -> None:
        job = pending.job
        if not _is_bypass(job):
            # Counted by the pipeline (JobResult): frames without a face, frames whose faces were not re-drawn.
            job.meta["faces_found"] = len(pending.faces)
            job.meta["faces_lipsynced"] = len(pending.items)
        if self._debug:
            t0 = time.perf_counter()
            overlay.annotate(job, pending.faces, pending.targets)
            self._timed("overlay", t0)
        self._done.append(job)

    def close(self) -> None:
        self._lookahead = deque()
        self._waiting = deque()
        self._backend.close()


def _is_bypass(job: FrameJob) -> bool:
    # The pipeline routes bypass frames around the processor; this guards against one arriving anyway.
    return job.bypass or (job.speakers is not None and job.speakers.bypass)


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
        return NeuralProcessor(backend, debug=settings.debug_mode,
                               batch_frames=min(DEFAULT_BATCH_FRAMES, settings.max_batch_size))
    except BaseException:
        backend.close()
        raise
