"""The job orchestrator: decoded frames and speech in, lip-synced frames and mixed audio out as one MP4.

Up to three threads per job, each taking frames in order: the job's own (decode, processor), a finishing thread
for a processor that defers each frame's blend (FrameProcessor.defers_finish), and the encode thread (x264, mux).
On the 720p benchmark the blend's 8 ms a frame moved off the job thread raised the job from 0.474 to 0.511 of a
plain decode-and-encode (benchmarks/bench_pipeline.py).
"""

from __future__ import annotations

import dataclasses
import functools
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
from typing import BinaryIO, Literal

import av

from lipsync_service.core import overlay
from lipsync_service.core.processor import FrameProcessor
from lipsync_service.errors import Cancelled, InputTimeout, InternalError, InvalidInput, LipsyncError
from lipsync_service.job import ExtendAudio, ExtendVideo, JobConfig
from lipsync_service.media.audio import OUTPUT_SAMPLE_RATE, AudioTrack, mix
from lipsync_service.media.av_errors import PYAV_ERRORS
from lipsync_service.media.demux import VideoSource
from lipsync_service.media.encode import OutputWriter
from lipsync_service.media.encode_thread import EncodeThread
from lipsync_service.media.timeline import audio_frames, extension_source_index, output_frame_count
from lipsync_service.media.types import FrameJob, Readable, VideoInfo
from lipsync_service.settings import Settings
from lipsync_service.speakers import FrameSpeakers, SpeakerData

log = logging.getLogger(__name__)

# How often blocking waits wake up to look at the cancel event.
_POLL_S = 0.1
# encode: the encode thread's busy time (it overlaps the other stages); encode_wait: the job thread blocked
# while the queue of the next thread (finishing or encode) was full.
STAGES = ("decode", "process", "encode", "encode_wait", "wait_input")
# Seconds of speech decoded per step while measuring how much of it runs past the video's end.
_MEASURE_STEP_S = 10.0
# Decoded frames waiting for the encoder, at most (a 4K frame is 12 MiB in 4:2:0, so 8 of them).
ENCODE_QUEUE_BYTES = 96 * 2**20


@dataclass
class JobInputs:
    """The inputs of one job.

    Attributes:
        video: a ByteStream (streaming mode) or the path of the spooled upload (transactional mode).
        speech: the speech track, already started by the caller (who also closes it).
        background: the background track, already started, or None.
        speakers: client speaker data (thread-safe; may still be filling), or None.
    """

    video: Readable | Path
    speech: AudioTrack
    background: AudioTrack | None = None
    speakers: SpeakerData | None = None


@dataclass(frozen=True)
class JobProgress:
    """Where a running job stands, as `run_files` reports it after each output frame.

    Attributes:
        frames: output frames written so far.
        total: the output's frame count as far as it is known now (`Job.expected_frames`), or None.
        video: the input video's facts (size, frame rate, the header's frame count).
    """

    frames: int
    total: int | None
    video: VideoInfo


@dataclass(frozen=True)
class Cut:
    """Input left out of the output because the other input ended first and no extension mode was set.

    Attributes:
        track: "speech" (longer than the video, extend_video unset) or "video" (longer than the speech,
            extend_audio unset).
        seconds: how much of it is not in the output; None when the input does not state its length.
    """

    track: Literal["speech", "video"]
    seconds: float | None

    @property
    def flag(self) -> str:
        """The command-line flag (of lipsync-client and `lipsync-service run`) that keeps it."""
        return "--extend-video forward|reverse" if self.track == "speech" else "--extend-audio silence"

    def notice(self) -> str:
        """One sentence for the user: how much was cut, why, and the flag that keeps it."""
        other = "video" if self.track == "speech" else "speech"
        amount = self.track if self.seconds is None else f"{self.seconds:.2f} s of {self.track}"
        return f"{amount} cut: the {self.track} is longer than the {other}; pass {self.flag} to keep it"


@dataclass
class Redrawn:
    """A run of output frames in which one face was re-drawn for one reason.

    Attributes:
        first, last: output frame numbers (inclusive); frames in between where the face was not re-drawn (its mouth
            covered, say) are not counted in `frames`.
        face: the face's label as the debug overlay shows it (`S<speaker id>` with speaker data, else `S<track id>`).
        why: "speaker data", "only face", "soundtrack sync" (its mouth follows the video's own audio), "lip motion"
            (its mouth moves most), or "largest face".
        frames: frames in which it was re-drawn.
        score: mean score of the choice over those frames (soundtrack sync, lip motion), else None.
    """

    first: int
    last: int
    face: str
    why: str
    frames: int = 1
    score: float | None = None

    def describe(self) -> str:
        """One line, e.g. "frames 120-260: S3 (soundtrack sync, score 0.48)"."""
        score = "" if self.score is None else f", score {self.score:.2f}"
        return f"frames {self.first}-{self.last}: {self.face} ({self.why}{score})"


@dataclass
class JobResult:
    """What a finished job produced.

    Attributes:
        frames: output frames written.
        duration_s: the output's duration.
        video: the input video's facts.
        stage_seconds: seconds spent per stage (STAGES).
        frames_without_face: output frames in which the processor found no face (they are unchanged); None
            when the processor does not look for faces (passthrough). Bypassed frames are not counted.
        frames_not_lipsynced: output frames with a face of which none was re-drawn (no one speaking per the
            speaker data, or lips that could not be read); None as above.
        frames_bypassed: output frames the speaker data asked to bypass.
        cut: speech or video left out of the output, or None.
        shots: shots found in the video (1 + the cuts and transitions); None as for frames_without_face.
        frames_kept: output frames in which a face chosen for re-drawing was left as it was, by reason: "mouth
            covered", "turned away", "unreadable" (no lips could be read, e.g. a speaker box without a face),
            "too small"; frames within a few frames of those, where the edit fades, are not counted.
        redrawn: which face was re-drawn where, and why, in order.
    """

    frames: int
    duration_s: float
    video: VideoInfo
    stage_seconds: dict[str, float] = field(default_factory=dict)
    frames_without_face: int | None = None
    frames_not_lipsynced: int | None = None
    frames_bypassed: int = 0
    cut: Cut | None = None
    shots: int | None = None
    frames_kept: dict[str, int] = field(default_factory=dict)
    redrawn: list[Redrawn] = field(default_factory=list)

    def notices(self) -> list[str]:
        """What the user should hear about the output, one sentence each: frames without a face, faces left as they
        were, input cut."""
        out = []
        if self.frames_without_face:
            out.append(f"no face found in {self.frames_without_face} of {self.frames} frames: they are unchanged")
        for why, count in sorted(self.frames_kept.items()):
            out.append(f"{_KEPT_NOTICE.get(why, why)} in {count} of {self.frames} frames: left as it was there")
        if self.cut is not None:
            out.append(self.cut.notice())
        return out


# How each reason for leaving a chosen face unchanged reads in a notice.
_KEPT_NOTICE = {
    "mouth covered": "the mouth was covered (a hand, a microphone...)",
    "turned away": "the head was turned too far for a convincing mouth",
    "unreadable": "the lips could not be read (no readable face in the box)",
    "too small": "the face was too small to re-draw",
}
# At most this many runs of re-drawn faces are kept in a result (a long video with many cuts has many).
MAX_REDRAWN = 200


@dataclass
class _FrameTally:
    """Output frames by what the processor found in them (FrameJob.meta "faces_found" and "faces_lipsynced")."""

    reported: int = 0
    without_face: int = 0
    not_lipsynced: int = 0
    bypassed: int = 0
    shots: set[int] = field(default_factory=set)
    kept: dict[str, int] = field(default_factory=dict)
    redrawn: list[Redrawn] = field(default_factory=list)

    def add(self, job: FrameJob, index: int) -> None:
        if job.bypass:
            self.bypassed += 1
            return
        faces = job.meta.get("faces_found")
        if faces is None:
            return
        self.reported += 1
        self.shots.add(int(job.meta.get("shot", 0)))
        if faces == 0:
            self.without_face += 1
        elif not job.meta.get("faces_lipsynced"):
            self.not_lipsynced += 1
        for why in {why for _, why, _ in job.meta.get("lipsync_skipped", ())}:
            self.kept[why] = self.kept.get(why, 0) + 1
        for label, why, _ in job.meta.get("lipsync_drawn", ()):
            self._redrawn(index, label, why)

    def _redrawn(self, index: int, label: str, why: str) -> None:
        # "soundtrack sync 0.52": the reason, then the score the choice won with.
        head, _, tail = why.rpartition(" ")
        try:
            reason, score = head, float(tail)
        except ValueError:
            reason, score = why, None
        for run in reversed(self.redrawn[-4:]):
            if run.face == label and run.why == reason:
                run.last, run.frames = index, run.frames + 1
                if score is not None and run.score is not None:
                    # A reason comes with a score in every frame or in none: the running mean over its frames.
                    run.score += (score - run.score) / run.frames
                return
        if len(self.redrawn) < MAX_REDRAWN:
            self.redrawn.append(Redrawn(first=index, last=index, face=label, why=reason, score=score))


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
                 sink: Callable[[bytes], object], cancel: threading.Event,
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
        # The encode thread's own stage times (merged into the result): one dict per thread.
        self._encode_timer = _Timer()
        self._encoder: EncodeThread | None = None
        # Between the processor and the encoder, for a processor that leaves work in its frames (FrameJob.finish).
        self._finisher: EncodeThread | None = None
        # Output frames handed to the processor (or bypassing it) but not yet written, in order.
        self._in_flight: deque[int] = deque()
        self._ready: dict[int, FrameJob] = {}
        self._writer: OutputWriter | None = None
        self._info: VideoInfo | None = None
        self._audio_written = 0
        self._inputs: JobInputs | None = None
        # Output frames of the input video itself (before any extension), once the demuxer has seen its end.
        self._video_frames: int | None = None
        self._header_frames: int | None = None
        self._header_read = False
        self._tally = _FrameTally()
        # Debug mode: the processor draws the overlay on its frames, this on the bypassed ones.
        self._bypass_overlay = overlay.BypassOverlay() if settings.debug_mode else None
        self._cut: Cut | None = None

    # Public ------------------------------------------------------------------------------------

    @property
    def video_info(self) -> VideoInfo | None:
        """The input video's facts, once `run` has read its header (None before)."""
        return self._info

    def expected_frames(self) -> int | None:
        """The output's frame count as far as it is known now, for progress reports.

        Exact once the video's frame count (the MP4 header's, or counted at its end) and the speech's
        duration are known: the output length rules (timeline.output_frame_count) applied to both. Before
        the speech is fully decoded it is the video's frame count; a header without a frame count (a
        fragmented MP4) gives an estimate from its duration and frame rate. None while nothing is known.
        """
        info, inputs = self._info, self._inputs
        if info is None or inputs is None:
            return None
        video_frames = self._video_frames
        if video_frames is None:
            video_frames = info.frame_count if info.frame_count is not None else self._frames_from_duration(info)
        speech_s = inputs.speech.duration_s
        if speech_s is None or video_frames is None:
            return video_frames
        return output_frame_count(video_frames, speech_s, Fraction(info.fps), self._cfg.extend_audio,
                                  self._cfg.extend_video)

    def _frames_from_duration(self, info: VideoInfo) -> int | None:
        """Frames in the header's duration at the output rate (a file without a sample table), looked up once."""
        if not self._header_read:
            self._header_read = True
            video = self._inputs.video if self._inputs is not None else None
            if isinstance(video, Path):
                try:
                    with av.open(str(video), mode="r", format="mp4") as container:
                        if container.duration and container.duration > 0:
                            self._header_frames = max(1, round(container.duration / 1_000_000 * float(info.fps)))
                except PYAV_ERRORS:  # only an estimate: the job itself reports a bad file
                    pass
        return self._header_frames

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
                            keep_tail=self._cfg.extend_video is not ExtendVideo.UNSPECIFIED,
                            soundtrack=self._processor.wants_soundtrack)
        try:
            with self._timer("decode"):
                info = video.open()
            self._info = info
            if info.frame_count is not None:
                # The header states the frame count: speaker data past it fails now, before any output.
                self._limit_speakers(info.frame_count)
            self._check_cancel()
            self._processor.configure(self._cfg)
            self._processor.start(info, inputs.speech.model, video.soundtrack)
            self._writer = OutputWriter(self._sink, info, self._cfg.video_encoding, self._cfg.output_audio_codec)
            depth = encode_queue_depth(self._processor.release_burst, info.width, info.height)
            name = threading.current_thread().name
            self._encoder = EncodeThread(self._cancel, name=f"{name}-encode", depth=depth)
            if self._processor.defers_finish:
                self._finisher = EncodeThread(self._cancel, name=f"{name}-finish", depth=depth)
            written = self._run_frames(video, info)
            with self._encode_timer("encode"):
                self._writer.close()
            if self._video_frames is not None and self._cfg.extend_video is ExtendVideo.UNSPECIFIED:
                self._cut = self._speech_cut(written, Fraction(info.fps))
            tally = self._tally
            stages = {k: v + self._encode_timer.seconds.get(k, 0.0) for k, v in self._timer.seconds.items()}
            result = JobResult(frames=written, duration_s=float(written / info.fps), video=info,
                               stage_seconds=stages,
                               frames_without_face=tally.without_face if tally.reported else None,
                               frames_not_lipsynced=tally.not_lipsynced if tally.reported else None,
                               frames_bypassed=tally.bypassed, cut=self._cut,
                               shots=len(tally.shots) if tally.reported else None, frames_kept=dict(tally.kept),
                               redrawn=list(tally.redrawn))
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
            # The finisher first: its running call may be handing a frame to the encoder.
            if self._finisher is not None:
                self._finisher.stop()
            if self._encoder is not None:
                self._encoder.stop()
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
            self._push(index, source_index, frame, self._speakers_for(source_index))
        if video_ended:
            total = video.frames_emitted
            self._video_frames = total
            # Without a count in the header (fragmented MP4), the first time it is known.
            self._limit_speakers(video.frames_decoded)
            if cfg.extend_video is not ExtendVideo.UNSPECIFIED and self._wanted(total, fps, extend=True):
                self._extend(video, total, fps)
        else:
            frames.close()
            # The speech ended first: input frames from this one on are not in the output (at a variable
            # rate each input frame has filled index / source_index output frames so far, on average).
            self._cut = Cut("video", None if info.frame_count is None else float(
                (info.frame_count - source_index) * Fraction(index, max(1, source_index)) / fps))
        with self._timer("process"):
            flushed = self._processor.flush()
        self._take(flushed)
        if self._in_flight:
            raise InternalError(
                f"frame processor did not return output frames {list(self._in_flight)[:5]}... after flush"
            )
        assert self._writer is not None and self._encoder is not None
        with self._timer("encode_wait"):
            if self._finisher is not None:
                self._finisher.drain()
            self._encoder.drain()
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
                # The tail's frames were decided in the first pass: the same data again, without waiting.
                self._push(index, source_index, frame, self._speakers_for(source_index))
                index += 1
        finally:
            tail.close()

    def _wanted(self, index: int, fps: Fraction, *, extend: bool) -> bool:
        """Whether output frame `index` is inside the output (waits for the speech it needs)."""
        assert self._inputs is not None
        speech = self._inputs.speech
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
        encoder = self._encoder
        assert encoder is not None
        while self._in_flight and self._in_flight[0] in self._ready:
            index = self._in_flight.popleft()
            job = self._ready.pop(index)
            if self._bypass_overlay is not None:
                with self._timer("process"):
                    self._bypass_overlay(job)
            with self._timer("encode_wait"):
                if self._finisher is not None:
                    # Every frame takes this way then, so they reach the encoder in order.
                    self._finisher.submit(functools.partial(self._finish_frame, job, index))
                else:
                    encoder.submit(functools.partial(self._write, job, index))

    def _finish_frame(self, job: FrameJob, index: int) -> None:
        """The processor's deferred work on one frame, then on to the encoder (on the finishing thread)."""
        job.complete()
        assert self._encoder is not None
        self._encoder.submit(functools.partial(self._write, job, index))

    def _write(self, job: FrameJob, index: int) -> None:
        """Encode one output frame and the audio up to its end (on the encode thread)."""
        writer = self._writer
        assert writer is not None
        # Normally done on the finishing thread; here for a processor that left work without saying so.
        job.complete()
        with self._encode_timer("encode"):
            writer.write_frame(job.frame, index)
        self._tally.add(job, index)
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
            self._wait_audio(background, end / OUTPUT_SAMPLE_RATE, self._encode_timer)
            samples = mix(samples, background.read_output(self._audio_written, count), self._cfg.background.volume)
        with self._encode_timer("encode"):
            self._writer.write_audio(samples)
        self._audio_written = end

    def _speech_cut(self, frames: int, fps: Fraction) -> Cut | None:
        """The speech past the end of an output that stopped with the video (waits for the speech's end)."""
        assert self._inputs is not None
        speech = self._inputs.speech
        end_s = float(frames / fps)
        position = end_s
        try:
            while (duration := speech.duration_s) is None:
                position += _MEASURE_STEP_S
                self._wait_audio(speech, position)
                # Only the length is wanted: let the decoded samples go.
                speech.read_model(position, position)
                speech.read_output(round(position * OUTPUT_SAMPLE_RATE), 0)
        except Cancelled:
            raise
        except LipsyncError as exc:  # the rest of the speech is unreadable or too long: the output is fine
            log.info("how much speech runs past the video is unknown: %s", exc)
            return None
        if audio_frames(duration, fps) <= frames:
            return None
        return Cut("speech", duration - end_s)

    def _wait_audio(self, track: AudioTrack, end_s: float, timer: _Timer | None = None) -> None:
        with (timer or self._timer)("wait_input"):
            while True:
                self._check_cancel()
                try:
                    track.wait_for(end_s, timeout=_POLL_S)
                    return
                except InputTimeout:
                    continue

    # Speaker data ------------------------------------------------------------------------------

    def _speakers_for(self, source_index: int) -> FrameSpeakers | None:
        """The client's data for an input frame, once decided (SpeakerData.wait_for); None: automatic mode.

        A frame with no data yet waits until its data, or data for a later frame, arrives or the input
        ends, so each frame gets the same answer whatever the timing of the client's batches.
        """
        speakers = self._inputs.speakers if self._inputs is not None else None
        if speakers is None or not self._cfg.speaker_info_provided:
            return None
        with self._timer("wait_input"):
            while True:
                self._check_cancel()
                try:
                    data = speakers.wait_for(source_index, timeout=_POLL_S)
                    break
                except InputTimeout:
                    continue
        if data is not None:
            info = self._info
            assert info is not None
            SpeakerData.check_boxes(data, info.width, info.height)
        return data

    def _limit_speakers(self, frame_count: int) -> None:
        """Refuse speaker data past the video's `frame_count` input frames: received so far, and on arrival."""
        speakers = self._inputs.speakers if self._inputs is not None else None
        if speakers is None or not self._cfg.speaker_info_provided:
            return
        speakers.set_frame_count(frame_count)

    # Helpers -----------------------------------------------------------------------------------

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("the job was cancelled")

    def _abort_writer(self) -> None:
        # The encode thread must be off the container before it is aborted.
        if self._encoder is not None and not self._encoder.stop():
            return
        if self._writer is not None:
            self._writer.abort()


def encode_queue_depth(burst: int, width: int, height: int) -> int:
    """Frames the encode thread's queue may hold: two processor bursts, at least 4, at most ENCODE_QUEUE_BYTES.

    With a shorter queue the job thread waits while the encoder works through a burst instead of preparing the
    next one; on the 720p benchmark clip 16 frames instead of 4 raised the throughput by about an eighth
    (README "Measured"). The finishing thread's queue (a processor that defers its blends) has the same depth, so
    such a job holds at most twice this many frames between its threads, each queue within ENCODE_QUEUE_BYTES.
    """
    frame_bytes = max(1, width * height * 3 // 2)  # one 4:2:0 frame
    return max(4, min(2 * max(1, burst), ENCODE_QUEUE_BYTES // frame_bytes))


def run_files(cfg: JobConfig, settings: Settings, processor: FrameProcessor, video_path: Path | str,
              audio_path: Path | str, output_path: Path | str, *,
              speakers: SpeakerData | list[FrameSpeakers] | None = None,
              background_path: Path | str | None = None, progress: Callable[[int], None] | None = None,
              cancel: threading.Event | None = None,
              on_progress: Callable[[JobProgress], None] | None = None) -> JobResult:
    """Run a job over local files (the offline runner).

    The MP4 is written to a hidden temporary file beside `output_path` and renamed into place on success,
    so a failed or interrupted run (any exception, KeyboardInterrupt included) never leaves a partial output
    or the temporary file behind.

    Args:
        cfg: job config (cfg.background must be set exactly when background_path is given).
        settings: service settings.
        processor: the lip-sync stage.
        video_path: input MP4.
        audio_path: speech, in cfg.input_audio_codec.
        output_path: where the MP4 goes.
        speakers: speaker data (all of it: no more will come), or None.
        background_path: background audio, in cfg.background.codec.
        progress: called after each output frame with the number of frames written.
        cancel: set to stop the job.
        on_progress: called after each output frame with a JobProgress: frames written, the expected total
            (Job.expected_frames), the input video's facts.

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
    tmp_name: str | None = None
    ok = False
    try:
        fd, tmp_name = _create_beside(output_path)
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
            job = Job(cfg, settings, processor, out.write, cancel or threading.Event(),
                      _report_to(progress, on_progress, lambda: job) if progress or on_progress else None)
            result = job.run(JobInputs(video=video, speech=speech, background=background, speakers=speakers))
        os.replace(tmp_name, output_path)
        ok = True
        return result
    finally:
        for track in tracks:
            track.close()
        for f in files:
            f.close()
        if not ok and tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except FileNotFoundError:
                pass


def _report_to(progress: Callable[[int], None] | None, on_progress: Callable[[JobProgress], None] | None,
               job: Callable[[], Job]) -> Callable[[int], None]:
    """A Job progress callback (frames written) that calls `progress` and reports a JobProgress to `on_progress`."""

    def report(frames: int) -> None:
        if progress is not None:
            progress(frames)
        if on_progress is not None:
            current = job()
            info = current.video_info
            assert info is not None  # frames are only written after the header was read
            on_progress(JobProgress(frames=frames, total=current.expected_frames(), video=info))

    return report


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


__all__ = ["Cut", "Job", "JobInputs", "JobProgress", "JobResult", "Redrawn", "run_files"]
