"""The job orchestrator: decoded frames and speech in, lip-synced frames and mixed audio out as one MP4."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av

from lipsync_service.job import ExtendAudio, ExtendVideo, JobConfig
from lipsync_service.errors import Cancelled, InputTimeout, InternalError, InvalidInput, LipsyncError
from lipsync_service.core.processor import FrameProcessor
from lipsync_service.media.audio import OUTPUT_SAMPLE_RATE, AudioTrack, mix
from lipsync_service.media.demux import VideoSource
from lipsync_service.media.encode import OutputWriter
from lipsync_service.media.timeline import audio_frames, extension_source_index
from lipsync_service.media.types import FrameJob, VideoInfo
from lipsync_service.settings import Settings
from lipsync_service.speakers import FrameSpeakers, SpeakerData

log = logging.getLogger(__name__)

# How often blocking waits wake up to look at the cancel event.
_POLL_S = 0.1
STAGES = ("decode", "process", "encode", "wait_input")


@dataclass
class JobInputs:
    """The inputs of one job.

    Attributes:
        video: a ByteStream (streaming mode) or the path of the spooled upload (transactional mode).
        speech: the speech track, already started by the caller (who also closes it).
        background: the background track, already started, or None.
        speakers: client speaker data (thread-safe; may still be filling), or None.
    """

    video: BinaryIO | Path
    speech: AudioTrack
    background: AudioTrack | None = None
    speakers: SpeakerData | None = None


@dataclass
class JobResult:
    """What a finished job produced."""

    frames: int
    duration_s: float
    video: VideoInfo
    stage_seconds: dict[str, float] = field(default_factory=dict)


class _Timer:
    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start


class Job:
    """Runs one lip-sync job from decoded input to encoded output, with memory bounded by a few frames.

    Output frames follow the demuxer's constant-rate timeline (input frame i is output frame i unless
    a variable-frame-rate input is normalised); speaker data is looked up by the input frame each
    output frame shows. When the video is extended, output frames past the input's end replay its
    last 5 s (timeline.extension_source_index). Audio is written after each output frame up to that
    frame's end, so the fragmented MP4 interleaves both and can be streamed.
    """

    def __init__(self, cfg: JobConfig, settings: Settings, processor: FrameProcessor,
                 sink: Callable[[bytes], None], cancel: threading.Event,
                 progress: Callable[[int], None] | None = None) -> None:
        """Set up a job (nothing runs until `run`).

        Args:
            cfg: the validated client config.
            settings: service settings (limits).
            processor: the lip-sync stage; started, flushed and closed by the job.
            sink: receives the output MP4 bytes in order.
            cancel: set by the caller to stop the job (it then raises Cancelled).
            progress: called with the number of output frames written so far, after each frame.
        """
        self._cfg = cfg
        self._settings = settings
        self._processor = processor
        self._sink = sink
        self._cancel = cancel
        self._progress = progress
        self._timer = _Timer()
        # Output frames handed to the processor (or bypassing it) but not yet written, in order.
        self._in_flight: deque[int] = deque()
        self._ready: dict[int, FrameJob] = {}
        self._writer: OutputWriter | None = None
        self._info: VideoInfo | None = None
        self._audio_written = 0
        self._inputs: JobInputs | None = None

    # Public ------------------------------------------------------------------------------------

    def run(self, inputs: JobInputs) -> JobResult:
        """Run the job to the end (blocking; meant for a worker thread).

        Args:
            inputs: video source, started audio tracks and speaker data.

        Returns:
            Output frame count and duration, the input video's facts, seconds per stage.

        Raises:
            InvalidInput: bad media or speaker data (message names the input and what to do).
            ResourceExhausted: an input over a size or duration limit.
            Cancelled: `cancel` was set.
            LipsyncError: other failures from the stages; the output is then incomplete and the
                writer was aborted (never finished as if it succeeded).
        """
        self._inputs = inputs
        video = VideoSource(inputs.video, self._settings,
                            keep_tail=self._cfg.extend_video is not ExtendVideo.UNSPECIFIED)
        try:
            with self._timer("decode"):
                info = video.open()
            self._info = info
            self._check_cancel()
            self._processor.configure(self._cfg)
            self._processor.start(info, inputs.speech.model)
            self._writer = OutputWriter(self._sink, info, self._cfg.video_encoding, self._cfg.output_audio_codec)
            written = self._run_frames(video, info)
            with self._timer("encode"):
                self._writer.close()
            result = JobResult(frames=written, duration_s=float(written / info.fps), video=info,
                               stage_seconds=dict(self._timer.seconds))
            log.debug("job done: %d frames, stages %s", written, result.stage_seconds)
            return result
        except LipsyncError:
            self._abort_writer()
            raise
        except av.error.FFmpegError as exc:
            self._abort_writer()
            raise InternalError(f"media processing failed: {exc}") from exc
        except BaseException:
            self._abort_writer()
            raise
        finally:
            try:
                self._processor.close()
            except Exception:  # noqa: BLE001 - cleanup must not mask the job's own error
                log.exception("closing the frame processor failed")
            video.close()

    # Main loop ---------------------------------------------------------------------------------

    def _run_frames(self, video: VideoSource, info: VideoInfo) -> int:
        cfg = self._cfg
        fps = Fraction(info.fps)
        frames = video.frames()
        video_ended = False
        while True:
            self._check_cancel()
            with self._timer("decode"):
                item = next(frames, None)
            if item is None:
                video_ended = True
                break
            index, source_index, frame = item
            if not self._wanted(index, fps, extend=False):
                break
            self._push(index, source_index, frame, self._speakers_for(source_index, wait=True))
        if video_ended:
            total = video.frames_emitted
            self._check_speaker_range(video.frames_decoded)
            if cfg.extend_video is not ExtendVideo.UNSPECIFIED and self._wanted(total, fps, extend=True):
                self._extend(video, total, fps)
        else:
            frames.close()
            if info.frame_count is not None:
                self._check_speaker_range(info.frame_count)
        with self._timer("process"):
            flushed = self._processor.flush()
        self._take(flushed)
        if self._in_flight:
            raise InternalError(
                f"frame processor did not return output frames {list(self._in_flight)[:5]}... after flush"
            )
        assert self._writer is not None
        if self._writer.frames_written == 0:
            raise InvalidInput(
                "the output would have no frames: the speech audio is empty or the video has no frames"
            )
        return self._writer.frames_written

    def _extend(self, video: VideoSource, total: int, fps: Fraction) -> None:
        tail_len = total - video.tail_start
        mode = self._cfg.extend_video
        order = (extension_source_index(k, total, tail_len, mode) for k in itertools.count())
        tail = video.tail_frames(order)
        index = total
        try:
            while self._wanted(index, fps, extend=True):
                self._check_cancel()
                with self._timer("decode"):
                    _, source_index, frame = next(tail)
                self._push(index, source_index, frame, self._speakers_for(source_index, wait=False))
                index += 1
        finally:
            tail.close()

    def _wanted(self, index: int, fps: Fraction, *, extend: bool) -> bool:
        """Whether output frame `index` is inside the output (waits for the speech it needs)."""
        speech = self._inputs.speech  # type: ignore[union-attr]
        self._wait_audio(speech, float((index + 1) / fps) + self._processor.audio_lookahead_s)
        duration = speech.duration_s
        if duration is None:
            # Speech continues past this frame: the output needs it.
            return True
        covered = index < audio_frames(duration, fps)
        if extend:
            return covered
        return covered or self._cfg.extend_audio is ExtendAudio.SILENCE

    def _push(self, index: int, source_index: int, frame: av.VideoFrame, speakers: FrameSpeakers | None) -> None:
        job = FrameJob(index=index, source_index=source_index, frame=frame, speakers=speakers,
                       bypass=bool(speakers is not None and speakers.bypass))
        self._in_flight.append(index)
        if job.bypass:
            # Straight through, but after the frames the processor still holds.
            self._ready[index] = job
            self._emit()
            return
        with self._timer("process"):
            done = self._processor.push(job)
        self._take(done)

    def _take(self, done: list[FrameJob]) -> None:
        for job in done:
            self._ready[job.index] = job
        self._emit()

    def _emit(self) -> None:
        writer = self._writer
        assert writer is not None and self._info is not None
        while self._in_flight and self._in_flight[0] in self._ready:
            index = self._in_flight.popleft()
            job = self._ready.pop(index)
            with self._timer("encode"):
                writer.write_frame(job.frame, index)
            self._write_audio_until(index + 1)
            if self._progress is not None:
                self._progress(writer.frames_written)

    # Audio -------------------------------------------------------------------------------------

    def _write_audio_until(self, frames: int) -> None:
        """Write mixed audio up to the end of output frame `frames - 1`."""
        assert self._writer is not None and self._info is not None and self._inputs is not None
        end = round(Fraction(frames) * OUTPUT_SAMPLE_RATE / Fraction(self._info.fps))
        count = end - self._audio_written
        if count <= 0:
            return
        # Past the speech's end read_output gives zeros: the silence padding of extend_audio.
        samples = self._inputs.speech.read_output(self._audio_written, count)
        background = self._inputs.background
        if background is not None and self._cfg.background is not None:
            self._wait_audio(background, end / OUTPUT_SAMPLE_RATE)
            samples = mix(samples, background.read_output(self._audio_written, count), self._cfg.background.volume)
        with self._timer("encode"):
            self._writer.write_audio(samples)
        self._audio_written = end

    def _wait_audio(self, track: AudioTrack, end_s: float) -> None:
        with self._timer("wait_input"):
            while True:
                self._check_cancel()
                try:
                    track.wait_for(end_s, timeout=_POLL_S)
                    return
                except InputTimeout:
                    continue

    # Speaker data ------------------------------------------------------------------------------

    def _speakers_for(self, source_index: int, *, wait: bool) -> FrameSpeakers | None:
        speakers = self._inputs.speakers if self._inputs is not None else None
        if speakers is None or not self._cfg.speaker_info_provided:
            return None
        if wait:
            with self._timer("wait_input"):
                while True:
                    self._check_cancel()
                    data = speakers.wait_for(source_index, timeout=_POLL_S)
                    if data is not None or self._speaker_decided(speakers, source_index):
                        break
        else:
            data = speakers.get(source_index)
        if data is not None:
            info = self._info
            assert info is not None
            SpeakerData.check_boxes(data, info.width, info.height)
        return data

    @staticmethod
    def _speaker_decided(speakers: SpeakerData, frame_id: int) -> bool:
        # wait_for returns None both on timeout and when the frame will never come; tell them apart.
        return speakers.closed or speakers.max_frame_id > frame_id

    def _check_speaker_range(self, frame_count: int) -> None:
        speakers = self._inputs.speakers if self._inputs is not None else None
        if speakers is None or not self._cfg.speaker_info_provided:
            return
        speakers.check_range(frame_count)

    # Helpers -----------------------------------------------------------------------------------

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("the job was cancelled")

    def _abort_writer(self) -> None:
        if self._writer is not None:
            self._writer.abort()


def run_files(cfg: JobConfig, settings: Settings, processor: FrameProcessor, video_path: Path | str,
              audio_path: Path | str, output_path: Path | str, *, speakers: SpeakerData | list[FrameSpeakers] | None = None,
              background_path: Path | str | None = None, progress: Callable[[int], None] | None = None,
              cancel: threading.Event | None = None) -> JobResult:
    """Run a job over local files (the offline runner).

    The MP4 is written to a temporary file beside `output_path` and renamed into place on success,
    so a failed run never leaves a partial output behind.

    Args:
        cfg: job config (cfg.background must be set exactly when background_path is given).
        settings: service settings.
        processor: the lip-sync stage.
        video_path: input MP4.
        audio_path: speech, in cfg.input_audio_codec.
        output_path: where the MP4 goes.
        speakers: speaker data (all of it: no more will come), or None.
        background_path: background audio, in cfg.background.codec.
        progress: called with the number of frames written.
        cancel: set to stop the job.

    Returns:
        The job result.

    Raises:
        InvalidInput: unreadable input files, or background config and file disagree; plus whatever
            `Job.run` raises.
    """
    if (background_path is None) != (cfg.background is None):
        raise InvalidInput(
            "background audio: give both a background file and its config (codec, volume), or neither"
        )
    if speakers is not None and not isinstance(speakers, SpeakerData):
        speakers = SpeakerData.from_frames(speakers)
    if speakers is not None:
        speakers.close()
        cfg = dataclasses.replace(cfg, speaker_info_provided=True)
    output_path = Path(output_path)
    tracks: list[AudioTrack] = []
    files: list[BinaryIO] = []
    fd, tmp_name = _create_beside(output_path)
    ok = False
    try:
        with os.fdopen(fd, "wb") as out:
            speech = AudioTrack(_open_input(audio_path, "speech audio", files), cfg.input_audio_codec,
                                name="speech", max_duration_s=settings.max_duration_s)
            tracks.append(speech)
            background = None
            if background_path is not None and cfg.background is not None:
                background = AudioTrack(_open_input(background_path, "background audio", files), cfg.background.codec,
                                        name="background", max_duration_s=settings.max_duration_s)
                tracks.append(background)
            for track in tracks:
                track.start()
            video = Path(video_path)
            if not video.is_file():
                raise InvalidInput(f"video: cannot read {video}: no such file")
            job = Job(cfg, settings, processor, out.write, cancel or threading.Event(), progress)
            result = job.run(JobInputs(video=video, speech=speech, background=background, speakers=speakers))
        os.replace(tmp_name, output_path)
        ok = True
        return result
    finally:
        for track in tracks:
            track.close()
        for f in files:
            f.close()
        if not ok:
            try:
                os.unlink(tmp_name)
            except FileNotFoundError:
                pass


def _create_beside(output_path: Path) -> tuple[int, str]:
    """A new hidden temporary file next to `output_path`, with the mode any new file gets (0666 & ~umask).

    mkstemp would make it 0600, which the rename would carry over to the user's output.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    directory = output_path.parent
    for _ in range(100):
        name = str(directory / f".{output_path.name}.{secrets.token_hex(4)}.part")
        try:
            return os.open(name, flags, 0o666), name
        except FileExistsError:
            continue
        except OSError as exc:
            raise InvalidInput(f"output: cannot create a file in {directory}: {exc.strerror}") from exc
    raise InvalidInput(f"output: cannot create a temporary file in {directory}")


def _open_input(path: Path | str, what: str, files: list[BinaryIO]) -> BinaryIO:
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by run_files
    except OSError as exc:
        raise InvalidInput(f"{what}: cannot read {path}: {exc.strerror}") from exc
    files.append(f)
    return f


__all__ = ["Job", "JobInputs", "JobResult", "run_files"]
