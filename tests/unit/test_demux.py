"""Input MP4 validation and frame-by-frame decoding, from files and from a non-seekable stream."""

from __future__ import annotations

import threading
import time
from fractions import Fraction

import av
import numpy as np
import pytest

from lipsync_service.config import ExtendVideo
from lipsync_service.errors import Cancelled, InvalidInput, ResourceExhausted
from lipsync_service.media.demux import VideoSource
from lipsync_service.media.pipe import ByteStream
from lipsync_service.media.timeline import extension_source_index
from lipsync_service.settings import Settings
from tests import synth

SETTINGS = Settings()


def feed(data: bytes, chunk: int = 4096, delay: float = 0.0, capacity: int = 1 << 20) -> ByteStream:
    """A ByteStream filled by a thread, like the RPC does while the upload arrives."""
    stream = ByteStream(capacity=capacity, name="video")

    def run() -> None:
        try:
            for i in range(0, len(data), chunk):
                if not stream.wait_space(timeout=10) or stream.closed:
                    return
                stream.write(data[i:i + chunk])
                if delay:
                    time.sleep(delay)
            stream.close()
        except ValueError:
            pass  # aborted by the reader

    threading.Thread(target=run, daemon=True).start()
    return stream


def numbers(frames) -> list[int]:
    return [synth.read_frame_number(f.to_ndarray(format="gray")) for f in frames]


def decode_all(source) -> tuple[list[int], list[int]]:
    indices, nums = [], []
    for index, frame in source.frames():
        assert frame.format.name == "yuv420p"
        indices.append(index)
        nums.append(synth.read_frame_number(frame.to_ndarray(format="gray")))
    return indices, nums


@pytest.mark.parametrize("layout", ["faststart", "fragmented", "transactional"])
def test_decodes_every_frame_in_order_from_a_path(tmp_path, layout):
    path = synth.make_video(tmp_path / "v.mp4", seconds=1.0, fps=25, size=(96, 64), layout=layout)
    with VideoSource(path, SETTINGS) as src:
        info = src.open()
        assert (info.width, info.height, info.fps, info.codec) == (96, 64, Fraction(25), "h264")
        assert info.frame_count == (None if layout == "fragmented" else 25)
        indices, nums = decode_all(src)
    assert indices == list(range(25))
    assert nums == list(range(25))


@pytest.mark.parametrize("layout", ["faststart", "fragmented"])
def test_decodes_a_streamable_mp4_from_a_non_seekable_stream(tmp_path, layout):
    data = synth.make_video(tmp_path / "v.mp4", seconds=1.0, fps=30, size=(64, 64), layout=layout).read_bytes()
    # Small, slow chunks: reads come back short, as from a real upload.
    src = VideoSource(feed(data, chunk=200, delay=0.002), SETTINGS)
    try:
        assert src.open().fps == Fraction(30)
        indices, nums = decode_all(src)
    finally:
        src.close()
    assert nums == indices == list(range(30))


def test_frames_are_the_decoders_own_objects_when_already_yuv420p(tmp_path):
    path = synth.make_video(tmp_path / "v.mp4", seconds=0.4, size=(64, 64))
    expected = synth.decode_frames(path)
    with VideoSource(path, SETTINGS) as src:
        for index, frame in src.frames():
            # Bit-identical planes to an independent decode.
            assert np.array_equal(frame.to_ndarray(), expected[index].to_ndarray())


def test_other_pixel_formats_are_converted_to_yuv420p(tmp_path):
    path = synth.make_video(tmp_path / "v.mp4", seconds=0.4, size=(64, 64), pix_fmt="yuv444p")
    with VideoSource(path, SETTINGS) as src:
        assert src.open().pix_fmt == "yuv444p"
        indices, nums = decode_all(src)
    assert nums == list(range(10))


def test_garbage_is_not_an_mp4(tmp_path):
    with pytest.raises(InvalidInput, match="not a readable MP4"):
        with VideoSource(feed(b"this is not a video" * 500), SETTINGS) as src:
            src.open()


def test_truncated_header(tmp_path):
    data = synth.make_video(tmp_path / "v.mp4", seconds=1.0, size=(64, 64)).read_bytes()
    with pytest.raises(InvalidInput, match="truncated"):
        with VideoSource(feed(data[:300]), SETTINGS) as src:
            src.open()


@pytest.mark.parametrize("layout", ["faststart", "fragmented"])
def test_truncated_mid_way_names_the_last_good_frame(tmp_path, layout):
    data = synth.make_video(tmp_path / "v.mp4", seconds=2.0, size=(64, 64), layout=layout).read_bytes()
    src = VideoSource(feed(data[: len(data) * 6 // 10]), SETTINGS)
    got = 0
    with pytest.raises(InvalidInput, match=r"truncated or corrupt after frame \d+") as err:
        try:
            for _ in src.frames():
                got += 1
        finally:
            src.close()
    assert 0 < got < 50
    assert f"after frame {got}" in str(err.value)


def test_mpeg4_video_is_rejected(tmp_path):
    path = synth.make_video(tmp_path / "v.mp4", seconds=0.4, size=(64, 64), codec="mpeg4")
    with pytest.raises(InvalidInput, match="video codec mpeg4 is not supported: re-encode the video as H.264"):
        with VideoSource(path, SETTINGS) as src:
            src.open()


@pytest.mark.parametrize("layout", ["faststart", "fragmented"])
def test_variable_frame_rate_is_rejected(tmp_path, layout):
    path = synth.make_video(tmp_path / "v.mp4", seconds=1.0, size=(64, 64), vfr=True, layout=layout)
    with pytest.raises(InvalidInput, match=r"variable frame rate.*re-encode at a constant frame rate, e.g. ffmpeg .*-vf fps=\d+"):
        with VideoSource(path, SETTINGS) as src:
            for _ in src.frames():
                pass


def test_a_frame_timing_gap_is_caught_while_decoding(tmp_path):
    # Constant rates in the header, but one frame is missing: only the pts deltas show it.
    path = tmp_path / "gap.mp4"
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width = stream.height = 64
        stream.codec_context.time_base = Fraction(1, 25)
        for pts in [*range(0, 100), *range(101, 150)]:
            frame = av.VideoFrame.from_ndarray(synth.draw_frame(pts, 64, 64), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 25)
            for p in stream.encode(frame):
                out.mux(p)
        for p in stream.encode(None):
            out.mux(p)
    with VideoSource(path, SETTINGS) as src:
        with pytest.raises(InvalidInput, match=r"variable frame rate is not supported \(frames 99 and 100 are 80.0 ms apart"):
            for _ in src.frames():
                pass


def test_odd_frame_size_is_rejected(tmp_path):
    path = synth.make_video(tmp_path / "v.mp4", seconds=0.4, size=(65, 64), pix_fmt="yuv444p")
    with pytest.raises(InvalidInput, match=r"frame size 65x64 is odd"):
        with VideoSource(path, SETTINGS) as src:
            src.open()


def test_frames_over_the_size_limit_are_rejected(tmp_path):
    path = synth.make_video(tmp_path / "v.mp4", seconds=0.2, size=(128, 64))
    with pytest.raises(InvalidInput, match=r"frame size 128x64 is larger than supported"):
        with VideoSource(path, Settings(max_frame_side=100)) as src:
            src.open()


@pytest.mark.parametrize("layout", ["faststart", "fragmented"])
def test_video_over_the_duration_limit(tmp_path, layout):
    path = synth.make_video(tmp_path / "v.mp4", seconds=2.0, size=(64, 64), layout=layout)
    with pytest.raises(ResourceExhausted, match=r"longer than the 1 s limit"):
        with VideoSource(path, Settings(max_duration_s=1.0)) as src:
            for _ in src.frames():
                pass


def test_mp4_without_video(tmp_path):
    path = tmp_path / "a.mp4"
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 48000
        for p in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(p)
    with pytest.raises(InvalidInput, match="no video stream"):
        with VideoSource(path, SETTINGS) as src:
            src.open()


def test_an_aborted_stream_surfaces_as_cancelled(tmp_path):
    data = synth.make_video(tmp_path / "v.mp4", seconds=2.0, size=(64, 64)).read_bytes()
    stream = ByteStream(capacity=1 << 20)
    stream.write(data[: len(data) // 2])  # the rest never comes
    src = VideoSource(stream, SETTINGS)
    timer = threading.Timer(0.3, stream.abort)
    timer.start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        for _ in src.frames():
            pass
    assert time.monotonic() - started < 5
    src.close()
    src.close()  # idempotent


@pytest.mark.parametrize("mode", [ExtendVideo.FORWARD, ExtendVideo.REVERSE])
def test_tail_frames_replay_the_last_five_seconds_bit_identically(tmp_path, mode):
    # 8 s at 10 fps with a keyframe every 7 frames: the tail (50 frames) spans several GOPs and
    # starts mid-GOP.
    path = synth.make_video(tmp_path / "v.mp4", seconds=8.0, fps=10, size=(64, 64), gop=7)
    reference = [f.to_ndarray() for f in synth.decode_frames(path)]
    with VideoSource(path, SETTINGS) as src:
        for _ in src.frames():
            pass
        n = src.frames_decoded
        assert (n, src.tail_start) == (80, 30)
        order = [extension_source_index(k, n, n - src.tail_start, mode) for k in range(120)]
        seen = []
        for index, frame in src.tail_frames(iter(order)):
            assert np.array_equal(frame.to_ndarray(), reference[index]), index
            seen.append(synth.read_frame_number(frame.to_ndarray(format="gray")))
    assert seen == order


def test_tail_frames_are_fresh_objects(tmp_path):
    path = synth.make_video(tmp_path / "v.mp4", seconds=1.0, fps=10, size=(64, 64))
    with VideoSource(path, SETTINGS) as src:
        for _ in src.frames():
            pass
        frames = [f for _, f in src.tail_frames([9, 8, 9])]
    assert frames[0] is not frames[2]
    assert np.array_equal(frames[0].to_ndarray(), frames[2].to_ndarray())


def test_kept_tail_does_not_grow_with_video_length(tmp_path):
    path = synth.make_video(tmp_path / "v.mp4", seconds=30.0, fps=25, size=(64, 64), gop=10, layout="fragmented")
    with VideoSource(path, SETTINGS) as src:
        peak = 0
        for _ in src.frames():
            peak = max(peak, sum(len(g.packets) for g in src._gops))
        assert src.frames_decoded == 750
    # 5 s at 25 fps plus at most one GOP and the decoder's few frames of delay.
    assert peak <= 125 + 10 + 16


def test_real_clips(media):
    with VideoSource(media("talking_2.mp4"), SETTINGS) as src:
        info = src.open()
        assert (info.width, info.height, info.fps, info.frame_count) == (844, 844, Fraction(25), 125)
        assert sum(1 for _ in src.frames()) == 125
    # Frame intervals of 1 and 2 thirtieths of a second: really variable.
    with pytest.raises(InvalidInput, match="variable frame rate"):
        with VideoSource(media("talking_1.mp4"), SETTINGS) as src:
            src.open()


def test_no_tail_is_kept_unless_asked(tmp_path):
    path = synth.make_video(tmp_path / "v.mp4", seconds=2.0, fps=10, size=(64, 64))
    with VideoSource(path, SETTINGS, keep_tail=False) as src:
        assert sum(1 for _ in src.frames()) == 20
        assert not src._gops
        with pytest.raises(ValueError, match="keep_tail"):
            next(src.tail_frames([19]))
