"""Input MP4 validation and frame-by-frame decoding, from files and from a non-seekable stream."""

from __future__ import annotations

import threading
import time
from fractions import Fraction

import av
import numpy as np
import pytest

from lipsync_service.errors import Cancelled, InvalidInput, ResourceExhausted
from lipsync_service.job import ExtendVideo
from lipsync_service.media.demux import VideoSource, yuv420p_planes
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
    for index, source_index, frame in source.frames():
        assert frame.format.name == "yuv420p"
        assert source_index == index  # constant-rate input maps one to one
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
        for index, _, frame in src.frames():
            # Bit-identical planes to an independent decode.
            assert np.array_equal(frame.to_ndarray(), expected[index].to_ndarray())


def test_other_pixel_formats_are_converted_to_yuv420p(tmp_path):
    path = synth.make_video(tmp_path / "v.mp4", seconds=0.4, size=(64, 64), pix_fmt="yuv444p")
    with VideoSource(path, SETTINGS) as src:
        assert src.open().pix_fmt == "yuv444p"
        indices, nums = decode_all(src)
    assert nums == list(range(10))


def test_garbage_is_not_an_mp4(tmp_path):
    with (
        pytest.raises(InvalidInput, match="not a readable MP4"),
        VideoSource(feed(b"this is not a video" * 500), SETTINGS) as src,
    ):
        src.open()


def test_a_garbage_file_message_does_not_show_the_servers_path(tmp_path):
    # In transactional mode the upload is a spool file (/tmp/lipsync-spool-...): the client never chose that name.
    path = tmp_path / "lipsync-spool-x.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"garbage" * 300)
    with pytest.raises(InvalidInput) as err, VideoSource(path, SETTINGS) as src:
        src.open()
    assert str(err.value) == ("video: the data is not a readable MP4 file or its header is corrupt "
                              "(Invalid data found when processing input)")


@pytest.mark.parametrize("layout", ["faststart", "transactional"])
def test_an_unknown_codec_tag_is_invalid_input(tmp_path, layout):
    # Found by fuzzing: one byte of the sample entry's "avc1" tag zeroed leaves PyAV without a codec
    # context (None), which used to escape as AttributeError -> INTERNAL.
    data = bytearray(synth.make_video(tmp_path / "v.mp4", seconds=0.6, size=(64, 64), layout=layout).read_bytes())
    tag = data.index(b"avc1", data.index(b"stsd"))
    data[tag] = 0
    path = tmp_path / "bad.mp4"
    path.write_bytes(bytes(data))
    with (
        pytest.raises(InvalidInput, match=r"^video: the MP4's video track is in a format this server cannot decode "
                                          r"\(unknown or corrupt codec tag\): re-encode the video as H.264$"),
        VideoSource(path, SETTINGS) as src,
    ):
        src.open()


def test_frames_of_another_size_than_the_header_are_invalid_input(tmp_path):
    # Found by fuzzing ("frame 0 is 16x14, the stream is 10x14" reached the encoder -> INTERNAL). Concrete case:
    # an SPS whose left crop is not aligned: the header says 58x64, FFmpeg's decoder ignores that crop and
    # outputs 64x64.
    path = tmp_path / "crop.mp4"
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width = stream.height = 64
        stream.codec_context.time_base = Fraction(1, 25)
        stream.options = {"x264-params": "crop-rect=6,0,0,0"}
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(synth.draw_frame(i, 64, 64), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for p in stream.encode(frame):
                out.mux(p)
        for p in stream.encode(None):
            out.mux(p)
    with VideoSource(path, SETTINGS) as src:
        assert (src.open().width, src.info.height) == (58, 64)
        with pytest.raises(InvalidInput, match=r"^video: frame 0 is 64x64 but the stream is 58x64: the H.264 data is "
                                               r"corrupt, changes resolution mid-stream or has a cropping"):
            for _ in src.frames():
                pass


def test_truncated_header(tmp_path):
    data = synth.make_video(tmp_path / "v.mp4", seconds=1.0, size=(64, 64)).read_bytes()
    with pytest.raises(InvalidInput, match="truncated"), VideoSource(feed(data[:300]), SETTINGS) as src:
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
    # One decoded frame is held back until the next one's timestamp shows how long it lasts.
    assert f"after frame {got + 1}" in str(err.value)


def test_mpeg4_video_is_rejected(tmp_path):
    path = synth.make_video(tmp_path / "v.mp4", seconds=0.4, size=(64, 64), codec="mpeg4")
    with (
        pytest.raises(InvalidInput, match="video codec mpeg4 is not supported: re-encode the video as H.264"),
        VideoSource(path, SETTINGS) as src,
    ):
        src.open()


def cfr_reference(times: list[Fraction], end: Fraction, fps: Fraction) -> list[int]:
    """Brute force: output frame k shows the latest input frame at or before (k + 1/2) / fps."""
    out = []
    k = 0
    while (k + Fraction(1, 2)) / fps < end or k == 0:
        out.append(max(i for i, t in enumerate(times) if t <= (k + Fraction(1, 2)) / fps))
        k += 1
    return out


@pytest.mark.parametrize("layout", ["faststart", "fragmented"])
def test_variable_frame_rate_is_normalised_to_a_constant_rate(tmp_path, layout):
    # Frame durations cycle 40, 40, 90, 40, 15 ms: gaps of more than one frame and two frames in one slot.
    path = synth.make_video(tmp_path / "v.mp4", seconds=2.0, size=(64, 64), vfr=True, layout=layout)
    decoded = synth.decode_frames(path)
    times = [Fraction(f.pts - decoded[0].pts) * f.time_base for f in decoded]
    end = times[-1] + Fraction(decoded[-1].duration) * decoded[-1].time_base
    with VideoSource(path, SETTINGS) as src:
        info = src.open()
        # The base rate is a timestamp grid (200 fps): the average, 50 frames in 2.25 s = 22.2 fps, rounded is used.
        assert (info.fps, info.constant_rate) == (Fraction(22), False)
        out = list(src.frames())
        assert src.frames_decoded == 50
        expected = cfr_reference(times, end, info.fps)
        assert [o.source_index for o in out] == expected
        assert [o.index for o in out] == list(range(len(expected)))
        assert src.frames_emitted == len(out) == round(end * 22)
        assert src.frames_repeated == len(out) - 50 + src.frames_dropped > 0
        assert src.frames_dropped > 0
    # Each output frame is the input picture it names, bit for bit; a repeated one is a separate object.
    for o in out:
        assert np.array_equal(o.frame.to_ndarray(), decoded[o.source_index].to_ndarray())
        assert synth.read_frame_number(o.frame.to_ndarray(format="gray")) == o.source_index
    repeats = [(a, b) for a, b in zip(out, out[1:]) if a.source_index == b.source_index]
    assert repeats and all(a.frame is not b.frame for a, b in repeats)


def test_a_missing_frame_is_filled_by_repeating_the_previous_one(tmp_path):
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
        assert src.open().fps == Fraction(25)
        out = list(src.frames())
        assert (src.frames_decoded, src.frames_emitted, src.frames_repeated) == (149, 150, 1)
    assert [o.source_index for o in out] == [*range(100), 99, *range(100, 149)]
    # Pictures carry their pts: output frame k shows picture k, except the gap shows picture 99 again.
    shown = [synth.read_frame_number(o.frame.to_ndarray(format="gray")) for o in out]
    assert shown == [*range(100), 99, *range(101, 150)]


def test_timestamps_that_go_backwards_are_rejected(tmp_path):
    # Corrupt composition offsets (ctts): a frame comes out of the decoder stamped before the one it follows.
    data = synth.make_video(tmp_path / "v.mp4", seconds=1.0, size=(64, 64)).read_bytes()
    path = tmp_path / "back.mp4"
    path.write_bytes(synth.backwards_timestamps(data))
    with (
        VideoSource(path, SETTINGS) as src,
        pytest.raises(InvalidInput, match=r"^video: frame 5 is stamped 0.120 s after the first frame, not later than "
                                          r"frame 4 \(0.160 s\): timestamps repeat or go backwards .*"
                                          r"ffmpeg -i in.mp4 -vf fps=25 -c:v libx264 out.mp4$"),
    ):
        for _ in src.frames():
            pass


def test_odd_frame_size_is_rejected(tmp_path):
    path = synth.make_video(tmp_path / "v.mp4", seconds=0.4, size=(65, 64), pix_fmt="yuv444p")
    with pytest.raises(InvalidInput, match=r"frame size 65x64 is odd"), VideoSource(path, SETTINGS) as src:
        src.open()


def test_frames_over_the_size_limit_are_rejected(tmp_path):
    path = synth.make_video(tmp_path / "v.mp4", seconds=0.2, size=(128, 64))
    with (
        pytest.raises(InvalidInput, match=r"frame size 128x64 is larger than supported"),
        VideoSource(path, Settings(max_frame_side=100)) as src,
    ):
        src.open()


@pytest.mark.parametrize("layout", ["faststart", "fragmented"])
def test_video_over_the_duration_limit(tmp_path, layout):
    path = synth.make_video(tmp_path / "v.mp4", seconds=2.0, size=(64, 64), layout=layout)
    with (
        pytest.raises(ResourceExhausted, match=r"longer than the 1 s limit"),
        VideoSource(path, Settings(max_duration_s=1.0)) as src,
    ):
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
    with pytest.raises(InvalidInput, match="no video stream"), VideoSource(path, SETTINGS) as src:
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
        for index, source, frame in src.tail_frames(iter(order)):
            assert index == source
            assert np.array_equal(frame.to_ndarray(), reference[index]), index
            seen.append(synth.read_frame_number(frame.to_ndarray(format="gray")))
    assert seen == order


def test_tail_of_a_variable_rate_video_replays_the_normalised_frames(tmp_path):
    # 140 frames of variable timing (6.3 s, 22 fps on average), a keyframe every 6 frames: the tail covers 5 s of
    # output frames, each the same input frame as in the first pass.
    path = synth.make_video(tmp_path / "v.mp4", seconds=14.0, fps=10, size=(64, 64), gop=6, vfr=True)
    reference = [f.to_ndarray() for f in synth.decode_frames(path)]
    with VideoSource(path, SETTINGS) as src:
        first_pass = [o.source_index for o in src.frames()]
        n = src.frames_emitted
        fps = src.info.fps
        assert src.tail_start == n - round(5 * fps) > 0
        order = [extension_source_index(k, n, n - src.tail_start, ExtendVideo.REVERSE) for k in range(3 * n)]
        got = list(src.tail_frames(iter(order)))
    assert [o.index for o in got] == order
    assert [o.source_index for o in got] == [first_pass[k] for k in order]
    for o in got:
        assert np.array_equal(o.frame.to_ndarray(), reference[o.source_index])
    assert len({id(o.frame) for o in got}) == len(got)  # every replayed frame is its own object


def test_tail_frames_are_fresh_objects(tmp_path):
    path = synth.make_video(tmp_path / "v.mp4", seconds=1.0, fps=10, size=(64, 64))
    with VideoSource(path, SETTINGS) as src:
        for _ in src.frames():
            pass
        frames = [f for _, _, f in src.tail_frames([9, 8, 9])]
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
    # Frame intervals of 1 and 2 thirtieths of a second: really variable, normalised to 30 fps.
    with VideoSource(media("talking_1.mp4"), SETTINGS) as src:
        info = src.open()
        assert (info.fps, info.constant_rate, info.frame_count) == (Fraction(30), False, 135)
        out = list(src.frames())
        assert (src.frames_decoded, src.frames_emitted, src.frames_dropped) == (135, 183, 0)
    # Every input frame is shown, in order, at least once.
    assert sorted(set(o.source_index for o in out)) == list(range(135))
    assert [o.source_index for o in out] == sorted(o.source_index for o in out)


def test_no_tail_is_kept_unless_asked(tmp_path):
    path = synth.make_video(tmp_path / "v.mp4", seconds=2.0, fps=10, size=(64, 64))
    with VideoSource(path, SETTINGS, keep_tail=False) as src:
        assert sum(1 for _ in src.frames()) == 20
        assert not src._gops
        with pytest.raises(ValueError, match="keep_tail"):
            next(src.tail_frames([19]))


def _raw_planes(path) -> list[np.ndarray]:
    """Frames as coded (the display rotation not applied), yuv420p [3h/2, w]."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="yuv420p") for f in container.decode(video=0)]


@pytest.mark.parametrize("rotation,turns", [(-90, -1), (90, 1), (180, 2)])
def test_a_rotated_phone_video_is_delivered_upright(tmp_path, rotation, turns):
    path = synth.make_video(tmp_path / "v.mp4", seconds=1.0, fps=25, size=(96, 64), rotation=rotation)
    coded = _raw_planes(path)
    with VideoSource(path, SETTINGS) as source:
        info = source.open()
        assert info.rotation == rotation
        assert (info.width, info.height) == ((96, 64) if turns == 2 else (64, 96))
        frames = list(source.frames())
        assert len(frames) == len(coded) == 25
        for got, raw in zip(frames, coded):
            assert (got.frame.width, got.frame.height) == (info.width, info.height)
            want = [np.rot90(p, turns) for p in yuv420p_planes(raw, 96, 64)]
            for g, w in zip(yuv420p_planes(got.frame.to_ndarray(), info.width, info.height), want):
                assert np.array_equal(g, w)
        # The extension tail is turned the same way.
        tail = list(source.tail_frames(range(20, 25)))
        for t in tail:
            assert np.array_equal(t.frame.to_ndarray(), frames[t.source_index].frame.to_ndarray())


def test_a_rotated_video_streams_upright_from_a_pipe(tmp_path):
    path = synth.make_video(tmp_path / "v.mp4", seconds=1.0, fps=25, size=(96, 64), layout="fragmented",
                            rotation=-90)
    with VideoSource(feed(path.read_bytes()), SETTINGS) as source:
        assert (source.open().width, source.open().height) == (64, 96)
        assert sum(1 for _ in source.frames()) == 25


def test_a_fragmented_mp4_longer_than_the_probe_streams_to_the_end(tmp_path):
    # From a pipe FFmpeg only knows the fragments its probing read (1-2 s here): that is no header duration
    # to reject later frames against.
    path = synth.make_video(tmp_path / "v.mp4", seconds=6.0, fps=25, size=(320, 240), layout="fragmented", gop=5)
    with VideoSource(feed(path.read_bytes()), SETTINGS) as source:
        assert source.open().frame_count is None
        indices, nums = decode_all(source)
    assert indices == nums == list(range(150))
