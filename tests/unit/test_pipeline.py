"""The job pipeline end to end over synthetic media: length rules, extension order, bit-identity, audio."""

from __future__ import annotations

import dataclasses
import os
import stat
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from lipsync_service.core.processor import FrameProcessor, PassThroughProcessor
from lipsync_service.errors import Cancelled, InvalidInput
from lipsync_service.job import (
    AudioCodec,
    BackgroundAudioSpec,
    EncodingMode,
    ExtendAudio,
    ExtendVideo,
    JobConfig,
    VideoEncodingSpec,
)
from lipsync_service.media.audio import AudioTrack
from lipsync_service.media.demux import VideoSource
from lipsync_service.media.pipe import ByteStream
from lipsync_service.media.timeline import extension_source_index
from lipsync_service.media.types import FrameJob
from lipsync_service.pipeline import Job, JobInputs, run_files
from lipsync_service.settings import Settings
from lipsync_service.speakers import FrameSpeakers, SpeakerBox, SpeakerData
from tests import synth

SETTINGS = Settings()
LOSSLESS = VideoEncodingSpec(mode=EncodingMode.LOSSLESS)
SIZE = (64, 64)


def cfg(**kw) -> JobConfig:
    return JobConfig(**kw)


def frame_numbers(data: Path | bytes) -> list[int]:
    return [synth.read_frame_number(f.to_ndarray(format="gray")) for f in synth.decode_frames(data)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """2 s, 25 fps, 50 numbered frames."""
    return synth.make_video(tmp_path_factory.mktemp("v") / "clip.mp4", seconds=2.0, fps=25, size=SIZE)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> dict[float, Path]:
    d = tmp_path_factory.mktemp("a")
    return {s: synth.make_wav(d / f"speech_{s}.wav", seconds=s) for s in (1.0, 3.0)}


@pytest.mark.parametrize(
    ("audio_s", "extend_audio", "extend_video", "frames"),
    [
        (1.0, ExtendAudio.UNSPECIFIED, ExtendVideo.UNSPECIFIED, 25),
        (1.0, ExtendAudio.SILENCE, ExtendVideo.UNSPECIFIED, 50),
        (1.0, ExtendAudio.UNSPECIFIED, ExtendVideo.FORWARD, 25),
        (3.0, ExtendAudio.UNSPECIFIED, ExtendVideo.UNSPECIFIED, 50),
        (3.0, ExtendAudio.SILENCE, ExtendVideo.UNSPECIFIED, 50),
        (3.0, ExtendAudio.UNSPECIFIED, ExtendVideo.FORWARD, 75),
        (3.0, ExtendAudio.UNSPECIFIED, ExtendVideo.REVERSE, 75),
    ],
)
def test_output_length_rules(tmp_path, clip, wavs, audio_s, extend_audio, extend_video, frames):
    out = tmp_path / "out.mp4"
    result = run_files(cfg(extend_audio=extend_audio, extend_video=extend_video), SETTINGS,
                       PassThroughProcessor(), clip, wavs[audio_s], out)
    info = synth.probe(out)
    assert result.frames == info["frame_count"] == frames
    assert result.duration_s == pytest.approx(frames / 25)
    assert info["pts"][0] == 0.0
    assert np.allclose(np.diff(info["pts"]), 0.04)
    assert info["video_codec"] == "h264" and info["audio_codec"] == "opus"
    # Audio and video agree within one frame.
    assert abs(info["audio_duration"] - frames / 25) <= 1 / 25
    assert set(result.stage_seconds) >= {"decode", "process", "encode"}


@pytest.mark.parametrize("mode", [ExtendVideo.FORWARD, ExtendVideo.REVERSE])
def test_extension_replays_the_last_five_seconds(tmp_path, mode):
    video = synth.make_video(tmp_path / "v.mp4", seconds=6.0, fps=10, size=SIZE, gop=7)
    speech = synth.make_wav(tmp_path / "s.wav", seconds=15.0, rate=8000)
    out = tmp_path / "out.mp4"
    run_files(cfg(extend_video=mode, video_encoding=LOSSLESS), SETTINGS, PassThroughProcessor(), video, speech, out)
    numbers = frame_numbers(out)
    assert len(numbers) == 150
    assert numbers[:60] == list(range(60))
    assert numbers[60:] == [extension_source_index(k, 60, 50, mode) for k in range(90)]
    if mode is ExtendVideo.REVERSE:
        assert numbers[58:66] == [58, 59, 58, 57, 56, 55, 54, 53]


def test_lossless_pass_through_is_bit_identical(tmp_path, clip):
    speech = synth.make_wav(tmp_path / "s.wav", seconds=2.5)
    out = tmp_path / "out.mp4"
    run_files(cfg(extend_video=ExtendVideo.REVERSE, video_encoding=LOSSLESS), SETTINGS,
              PassThroughProcessor(), clip, speech, out)
    source = [f.to_ndarray() for f in synth.decode_frames(clip)]
    output = [f.to_ndarray() for f in synth.decode_frames(out)]
    assert len(output) == 63
    for index, planes in enumerate(output):
        src = index if index < 50 else extension_source_index(index - 50, 50, 50, ExtendVideo.REVERSE)
        assert np.array_equal(planes, source[src]), index


class InvertingProcessor(FrameProcessor):
    """Test stage that changes every pixel it gets and holds two frames back, like a smoothing model."""

    def __init__(self) -> None:
        self.held: list[FrameJob] = []
        self.seen: list[int] = []
        self.sources: list[int] = []

    def start(self, video, audio, soundtrack=None) -> None:
        pass

    def push(self, job: FrameJob) -> list[FrameJob]:
        self.seen.append(job.index)
        self.sources.append(job.source_index)
        planes = job.frame.to_ndarray()
        inverted = av.VideoFrame.from_ndarray(255 - planes, format="yuv420p")
        self.held.append(dataclasses.replace(job, frame=inverted, changed=True))
        out, self.held = self.held[:-2], self.held[-2:]
        return out

    def flush(self) -> list[FrameJob]:
        out, self.held = self.held, []
        return out


def test_bypass_frames_skip_the_processor_and_keep_their_place(tmp_path, clip):
    speech = synth.make_wav(tmp_path / "s.wav", seconds=2.0)
    bypass = {0, 3, 4, 10, 49}
    speakers = [FrameSpeakers(frame_id=i, bypass=i in bypass) for i in range(50)]
    processor = InvertingProcessor()
    out = tmp_path / "out.mp4"
    run_files(cfg(video_encoding=LOSSLESS), SETTINGS, processor, clip, speech, out, speakers=speakers)
    assert processor.seen == [i for i in range(50) if i not in bypass]
    source = [f.to_ndarray() for f in synth.decode_frames(clip)]
    output = [f.to_ndarray() for f in synth.decode_frames(out)]
    assert len(output) == 50
    for i in range(50):
        expected = source[i] if i in bypass else 255 - source[i]
        assert np.array_equal(output[i], expected), i


def test_variable_frame_rate_is_normalised_and_speaker_data_follows_input_frames(tmp_path):
    video = synth.make_video(tmp_path / "vfr.mp4", seconds=2.0, size=SIZE, vfr=True)  # 50 frames in 2.25 s
    speech = synth.make_wav(tmp_path / "s.wav", seconds=1.0)
    with VideoSource(video, SETTINGS) as src:
        sources = [o.source_index for o in src.frames()]  # the demuxer's own tests check this mapping
    assert len(sources) == 50 and len(set(sources)) < 50  # frames repeated and dropped: 2.25 s at 22 fps
    # Input frame 2 is followed by a 90 ms gap (shown twice); bypass is keyed by input frame ids.
    bypass = {2, 7, 20}
    speakers = [FrameSpeakers(frame_id=i, bypass=i in bypass) for i in range(50)]
    processor = InvertingProcessor()
    out = tmp_path / "out.mp4"
    result = run_files(cfg(extend_audio=ExtendAudio.SILENCE, video_encoding=LOSSLESS), SETTINGS, processor,
                       video, speech, out, speakers=speakers)
    assert result.video.fps == 22 and not result.video.constant_rate
    info = synth.probe(out)
    assert result.frames == info["frame_count"] == len(sources)
    assert np.allclose(np.diff(info["pts"]), 1 / 22)
    assert abs(info["audio_duration"] - result.frames / 22) <= 1 / 22
    kept = [(k, s) for k, s in enumerate(sources) if s not in bypass]
    assert list(zip(processor.seen, processor.sources)) == kept
    source = [f.to_ndarray() for f in synth.decode_frames(video)]
    output = [f.to_ndarray() for f in synth.decode_frames(out)]
    assert sources.count(2) == 2
    for k, s in enumerate(sources):
        expected = source[s] if s in bypass else 255 - source[s]
        assert np.array_equal(output[k], expected), k


def test_output_file_gets_the_usual_mode(tmp_path, clip):
    speech = synth.make_wav(tmp_path / "s.wav", seconds=1.0)
    out = tmp_path / "out.mp4"
    old = os.umask(0o027)
    try:
        run_files(cfg(), SETTINGS, PassThroughProcessor(), clip, speech, out)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o640


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.mark.parametrize("volume", [0.25, 1.0])
def test_background_is_mixed_at_its_volume(tmp_path, clip, volume):
    speech = synth.make_wav(tmp_path / "s.wav", seconds=2.0, kind="silence")
    background = synth.make_wav(tmp_path / "b.wav", seconds=2.0, freq=300.0)  # amplitude 0.5
    out = tmp_path / "out.mp4"
    job_cfg = cfg(background=BackgroundAudioSpec(codec=AudioCodec.WAV, volume=volume),
                  output_audio_codec=AudioCodec.MP3)
    run_files(job_cfg, SETTINGS, PassThroughProcessor(), clip, speech, out, background_path=background)
    samples, rate = synth.decode_audio(out)
    middle = samples[rate // 4: rate * 7 // 4]
    assert rms(middle) == pytest.approx(volume * 0.5 / np.sqrt(2), rel=0.1)
    assert synth.probe(out)["audio_codec"] in ("mp3", "mp3float")


def test_speech_reaches_the_output(tmp_path, clip):
    speech = synth.make_wav(tmp_path / "s.wav", seconds=1.0)  # tone, amplitude 0.5
    out = tmp_path / "out.mp4"
    run_files(cfg(extend_audio=ExtendAudio.SILENCE), SETTINGS, PassThroughProcessor(), clip, speech, out)
    samples, rate = synth.decode_audio(out)
    assert rms(samples[rate // 4: rate * 3 // 4]) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)
    # Padded with silence after the speech ends.
    assert rms(samples[rate * 5 // 4: rate * 7 // 4]) < 0.01
    assert abs(len(samples) / rate - 2.0) <= 1 / 25


@pytest.mark.parametrize("kind", ["wav8k_stereo", "mp3"])
def test_speech_formats(tmp_path, clip, kind):
    if kind == "mp3":
        speech, codec = synth.make_mp3(tmp_path / "s.mp3", seconds=1.5, rate=22050, channels=2), AudioCodec.MP3
    else:
        speech, codec = synth.make_wav(tmp_path / "s.wav", seconds=1.5, rate=8000, channels=2), AudioCodec.WAV
    out = tmp_path / "out.mp4"
    result = run_files(cfg(input_audio_codec=codec), SETTINGS, PassThroughProcessor(), clip, speech, out)
    info = synth.probe(out)
    # MP3 decoders add a little padding; the frame count still covers the speech.
    assert result.frames == info["frame_count"] in (38, 39)
    assert abs(info["audio_duration"] - result.frames / 25) <= 1 / 25


def feed(stream: ByteStream, data: bytes, chunk: int = 2048, delay: float = 0.0) -> list[float]:
    """Fill `stream` from a thread; the returned list gets the time the last byte was written."""
    finished: list[float] = []

    def run() -> None:
        try:
            for i in range(0, len(data), chunk):
                stream.wait_space(timeout=10)
                stream.write(data[i:i + chunk])
                if delay:
                    time.sleep(delay)
            finished.append(time.monotonic())
            stream.close()
        except ValueError:
            pass  # aborted

    threading.Thread(target=run, daemon=True).start()
    return finished


@pytest.mark.parametrize("layout", ["faststart", "fragmented"])
def test_streaming_input_from_byte_streams(tmp_path, layout):
    # Short GOPs make a clip of ~210 kB: many of the demuxer's 32 KiB reads, and more than FFmpeg's probing
    # reads before the first frame, so the upload (about 2 s here) outlasts the start of the output.
    video = synth.make_video(tmp_path / "v.mp4", seconds=6.0, size=(320, 240), layout=layout, gop=5).read_bytes()
    speech = synth.make_wav(tmp_path / "s.wav", seconds=6.0).read_bytes()
    video_stream, audio_stream = ByteStream(65536, "video"), ByteStream(65536, "speech")
    chunks: list[tuple[float, bytes]] = []
    track = AudioTrack(audio_stream, AudioCodec.WAV)
    track.start()
    upload_finished = feed(video_stream, video, chunk=1024, delay=0.01)
    feed(audio_stream, speech, chunk=4096)
    try:
        job = Job(cfg(), SETTINGS, PassThroughProcessor(), lambda b: chunks.append((time.monotonic(), b)),
                  threading.Event())
        result = job.run(JobInputs(video=video_stream, speech=track))
    finally:
        track.close()
    data = b"".join(b for _, b in chunks)
    assert result.frames == synth.probe(data)["frame_count"] == 150
    assert frame_numbers(data) == list(range(150))
    # Output started while the video was still uploading.
    assert len(video) > 150 * 1024
    assert chunks[0][0] < upload_finished[0]


def test_cancel_stops_the_job(tmp_path, clip):
    speech = synth.make_wav(tmp_path / "s.wav", seconds=2.0)
    cancel = threading.Event()
    out = tmp_path / "out.mp4"

    def progress(n: int) -> None:
        if n == 10:
            cancel.set()

    with pytest.raises(Cancelled):
        run_files(cfg(), SETTINGS, PassThroughProcessor(), clip, speech, out, progress=progress, cancel=cancel)
    assert list(tmp_path.iterdir()) == [speech]


def bad_video(tmp_path: Path, kind: str) -> Path:
    if kind == "garbage":
        path = tmp_path / "g.mp4"
        path.write_bytes(b"\x00garbage bytes, not a video" * 200)
        return path
    if kind == "truncated":
        data = synth.make_video(tmp_path / "t.mp4", seconds=2.0, size=SIZE).read_bytes()
        path = tmp_path / "cut.mp4"
        path.write_bytes(data[: len(data) * 7 // 10])
        return path
    assert kind == "mpeg4"
    return synth.make_video(tmp_path / "m.mp4", seconds=1.0, size=SIZE, codec="mpeg4")


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("garbage", "not a readable MP4"),
        ("truncated", r"truncated or corrupt after frame \d+"),
        ("mpeg4", "video codec mpeg4 is not supported: re-encode the video as H.264"),
    ],
)
def test_bad_video_fails_without_leaving_output(tmp_path, kind, message):
    video = bad_video(tmp_path, kind)
    speech = synth.make_wav(tmp_path / "s.wav", seconds=2.0)
    out = tmp_path / "out.mp4"
    before = set(tmp_path.iterdir())
    with pytest.raises(InvalidInput, match=message):
        run_files(cfg(), SETTINGS, PassThroughProcessor(), video, speech, out)
    assert set(tmp_path.iterdir()) == before


def test_audio_codec_mismatch(tmp_path, clip):
    speech = synth.make_wav(tmp_path / "s.wav", seconds=2.0)
    out = tmp_path / "out.mp4"
    with pytest.raises(InvalidInput, match="speech audio: the data is a WAV file but the declared codec is MP3"):
        run_files(cfg(input_audio_codec=AudioCodec.MP3), SETTINGS, PassThroughProcessor(), clip, speech, out)
    assert not out.exists()


def test_speaker_data_beyond_the_video(tmp_path, clip):
    speech = synth.make_wav(tmp_path / "s.wav", seconds=2.0)
    speakers = [FrameSpeakers(frame_id=i) for i in range(60)]
    with pytest.raises(InvalidInput, match="frame_id 59 is out of range: the video has 50 frames"):
        run_files(cfg(), SETTINGS, PassThroughProcessor(), clip, speech, tmp_path / "o.mp4", speakers=speakers)


def test_speaker_box_outside_the_frame(tmp_path, clip):
    speech = synth.make_wav(tmp_path / "s.wav", seconds=2.0)
    speakers = SpeakerData.from_frames(
        [FrameSpeakers(frame_id=5, speakers=(SpeakerBox(40, 40, 30, 10, speaker_id=1, is_speaking=True),))]
    )
    with pytest.raises(InvalidInput, match=r"frame 5, speaker 0: bbox .* extends outside the 64x64 frame"):
        run_files(cfg(), SETTINGS, PassThroughProcessor(), clip, speech, tmp_path / "o.mp4", speakers=speakers)


def test_transactional_layout_from_a_spooled_path(tmp_path):
    video = synth.make_video(tmp_path / "v.mp4", seconds=1.0, size=SIZE, layout="transactional")
    speech = synth.make_wav(tmp_path / "s.wav", seconds=1.0)
    chunks: list[bytes] = []
    with open(speech, "rb") as f:
        track = AudioTrack(f, AudioCodec.WAV)
        track.start()
        try:
            result = Job(cfg(), SETTINGS, PassThroughProcessor(), chunks.append, threading.Event()).run(
                JobInputs(video=video, speech=track))
        finally:
            track.close()
    assert result.video.frame_count == 25
    assert frame_numbers(b"".join(chunks)) == list(range(25))


def test_speaker_data_arriving_while_the_job_runs(tmp_path, clip):
    speech = synth.make_wav(tmp_path / "s.wav", seconds=2.0)
    speakers = SpeakerData()
    bypass = set(range(0, 50, 3))

    def send() -> None:
        for start in range(0, 50, 10):
            time.sleep(0.02)
            for i in range(start, start + 10):
                speakers.add(FrameSpeakers(frame_id=i, bypass=i in bypass))
        speakers.close()

    threading.Thread(target=send, daemon=True).start()
    processor = InvertingProcessor()
    chunks: list[bytes] = []
    with open(speech, "rb") as f:
        track = AudioTrack(f, AudioCodec.WAV)
        track.start()
        try:
            Job(cfg(speaker_info_provided=True, video_encoding=LOSSLESS), SETTINGS, processor, chunks.append,
                threading.Event()).run(JobInputs(video=clip, speech=track, speakers=speakers))
        finally:
            track.close()
    assert processor.seen == [i for i in range(50) if i not in bypass]
    assert len(synth.decode_frames(b"".join(chunks))) == 50


@pytest.mark.parametrize(("speech_s", "extend_video", "frames"),
                         [(1.0, ExtendVideo.UNSPECIFIED, 183), (8.0, ExtendVideo.FORWARD, 240)])
def test_real_variable_frame_rate_clip(tmp_path, media, speech_s, extend_video, frames):
    # talking_1.mp4: 135 frames 1/30 or 2/30 s apart, 6.1 s: 183 frames at 30 fps; extension replays its tail.
    speech = synth.make_wav(tmp_path / "s.wav", seconds=speech_s)
    out = tmp_path / "out.mp4"
    result = run_files(cfg(extend_audio=ExtendAudio.SILENCE, extend_video=extend_video), SETTINGS,
                       PassThroughProcessor(), media("talking_1.mp4"), speech, out)
    info = synth.probe(out)
    assert result.frames == info["frame_count"] == frames
    assert np.allclose(np.diff(info["pts"]), 1 / 30)
    assert abs(info["audio_duration"] - frames / 30) <= 1 / 30


def test_real_clip_with_real_speech(tmp_path, media):
    out = tmp_path / "out.mp4"
    result = run_files(cfg(extend_video=ExtendVideo.REVERSE), SETTINGS, PassThroughProcessor(),
                       media("talking_3.mp4"), media("speech_en_1.wav"), out)
    info = synth.probe(out)
    assert (info["width"], info["height"]) == (590, 590)
    assert info["frame_count"] == result.frames
    assert result.frames >= 125  # the speech is at least as long as the 5 s clip
    assert abs(info["audio_duration"] - result.frames / 25) <= 1 / 25


class BurstProcessor(FrameProcessor):
    """Holds frames and hands them back eight at a time, as the neural processor's generator batches do."""

    release_burst = 8

    def __init__(self) -> None:
        self.held: list[FrameJob] = []

    def start(self, video, audio, soundtrack=None) -> None:
        return None

    def push(self, job: FrameJob) -> list[FrameJob]:
        self.held.append(job)
        if len(self.held) < self.release_burst:
            return []
        out, self.held = self.held, []
        return out

    def flush(self) -> list[FrameJob]:
        out, self.held = self.held, []
        return out


def test_the_encoder_queue_takes_two_bursts_of_the_processor(tmp_path, clip, monkeypatch):
    import lipsync_service.pipeline as pipeline

    depths: list[int] = []
    real = pipeline.EncodeThread

    def recording(*args, depth: int = 4, **kw):
        depths.append(depth)
        return real(*args, depth=depth, **kw)

    monkeypatch.setattr(pipeline, "EncodeThread", recording)
    speech = synth.make_wav(tmp_path / "s.wav", seconds=2.0)
    out = tmp_path / "out.mp4"
    run_files(cfg(video_encoding=LOSSLESS), SETTINGS, BurstProcessor(), clip, speech, out)
    assert depths == [16]
    assert frame_numbers(out) == list(range(50))


def test_encoder_queue_depth_is_bounded_in_bytes():
    from lipsync_service.pipeline import ENCODE_QUEUE_BYTES, encode_queue_depth

    assert encode_queue_depth(1, 1280, 720) == 4  # a processor that returns frames one by one
    assert encode_queue_depth(8, 1280, 720) == 16
    # A 4K frame is 12 MiB: the queue stops at what ENCODE_QUEUE_BYTES holds, never below 4.
    assert encode_queue_depth(8, 3840, 2160) == ENCODE_QUEUE_BYTES // (3840 * 2160 * 3 // 2) == 8
    assert encode_queue_depth(8, 7680, 4320) == 4


class DeferringProcessor(BurstProcessor):
    """Leaves the pixel change of every other frame as deferred work (FrameJob.finish), as the neural processor
    leaves its blends; records the thread each piece of work ran on."""

    defers_finish = True

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.threads: set[str] = set()
        self.job_thread = ""

    def push(self, job: FrameJob) -> list[FrameJob]:
        self.job_thread = threading.current_thread().name
        if job.index % 2 == 0:
            def invert(job: FrameJob = job) -> None:
                self.threads.add(threading.current_thread().name)
                if job.index == self.fail_at:
                    raise InvalidInput("the blend failed")
                time.sleep(0.002)  # so frames wait in the finisher's queue while later ones are pushed
                job.frame = av.VideoFrame.from_ndarray(255 - job.frame.to_ndarray(), format="yuv420p")

            job.changed, job.finish = True, invert
        return super().push(job)


def test_deferred_work_runs_off_the_job_thread_before_encoding_in_order(tmp_path, clip):
    speech = synth.make_wav(tmp_path / "s.wav", seconds=2.0)
    out = tmp_path / "out.mp4"
    threads = threading.active_count()
    processor = DeferringProcessor()
    run_files(cfg(video_encoding=LOSSLESS), SETTINGS, processor, clip, speech, out)
    assert len(processor.threads) == 1 and processor.job_thread not in processor.threads
    source = [f.to_ndarray() for f in synth.decode_frames(clip)]
    output = [f.to_ndarray() for f in synth.decode_frames(out)]
    assert len(output) == 50
    for index, planes in enumerate(output):
        assert np.array_equal(planes, 255 - source[index] if index % 2 == 0 else source[index]), index
    assert threading.active_count() == threads, threading.enumerate()


def test_deferred_work_failing_fails_the_job_and_stops_its_threads(tmp_path, clip):
    speech = synth.make_wav(tmp_path / "s.wav", seconds=2.0)
    threads = threading.active_count()
    with pytest.raises(InvalidInput, match="the blend failed"):
        run_files(cfg(), SETTINGS, DeferringProcessor(fail_at=20), clip, speech, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()
    assert threading.active_count() == threads, threading.enumerate()


def test_deferred_work_of_a_processor_that_does_not_declare_it_still_runs(tmp_path, clip):
    """A wrapper that forgets `defers_finish` must not lose the blends: the encode thread finishes the frames."""
    class Undeclared(DeferringProcessor):
        defers_finish = False

    speech = synth.make_wav(tmp_path / "s.wav", seconds=2.0)
    out = tmp_path / "out.mp4"
    processor = Undeclared()
    run_files(cfg(video_encoding=LOSSLESS), SETTINGS, processor, clip, speech, out)
    source = [f.to_ndarray() for f in synth.decode_frames(clip)]
    output = [f.to_ndarray() for f in synth.decode_frames(out)]
    assert all(np.array_equal(planes, 255 - source[i] if i % 2 == 0 else source[i]) for i, planes in enumerate(output))
    assert len(processor.threads) == 1 and processor.job_thread not in processor.threads
