"""Output encoding: the fragmented MP4 decodes with exact frames, timestamps, GOPs, codecs and options."""

from __future__ import annotations

import io
import re
from fractions import Fraction

import av
import numpy as np
import pytest
from google.protobuf import wrappers_pb2

from lipsync_service import config
from lipsync_service._proto.nvidia.ai4m.audio.v1 import audio_pb2
from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2
from lipsync_service.errors import Cancelled, InternalError, InvalidInput
from lipsync_service.job import AudioCodec, CustomEncoding, EncodingMode, VideoEncodingSpec
from lipsync_service.media.encode import OutputWriter, encoder_options
from lipsync_service.media.types import VideoInfo
from tests import synth

pytestmark = pytest.mark.timeout(120)

LOSSY = VideoEncodingSpec()
LOSSLESS = VideoEncodingSpec(mode=EncodingMode.LOSSLESS)


def custom(**options) -> VideoEncodingSpec:
    return VideoEncodingSpec(mode=EncodingMode.CUSTOM, custom=CustomEncoding(**options))


def wire_custom(**options) -> lipsync_pb2.LipsyncConfig:
    """A wire config whose custom encoding holds `options`, each packed in the wrapper for its Python type."""
    wrappers = {bool: wrappers_pb2.BoolValue, int: wrappers_pb2.Int32Value, float: wrappers_pb2.FloatValue,
                str: wrappers_pb2.StringValue}
    msg = lipsync_pb2.LipsyncConfig(input_audio_codec=audio_pb2.AUDIO_CODEC_WAV)
    for key, value in options.items():
        msg.output_video_encoding.custom_encoding.custom[key].Pack(wrappers[type(value)](value=value))
    return msg


def info(width: int = 160, height: int = 120, fps: Fraction = Fraction(25)) -> VideoInfo:
    return VideoInfo(width=width, height=height, fps=fps, pix_fmt="yuv420p", frame_count=None)


def numbered_frames(n: int, width: int = 160, height: int = 120) -> list[av.VideoFrame]:
    return [av.VideoFrame.from_ndarray(synth.draw_frame(i, width, height), format="rgb24").reformat(format="yuv420p")
            for i in range(n)]


def noise_frames(n: int, width: int, height: int) -> list[av.VideoFrame]:
    rng = np.random.default_rng(7)
    return [av.VideoFrame.from_ndarray(rng.integers(16, 236, (height * 3 // 2, width), dtype=np.uint8),
                                       format="yuv420p") for _ in range(n)]


def encode(frames, encoding=LOSSY, audio_codec=AudioCodec.OPUS, *, video=None, audio=None, threads=0):
    """Encode frames (and audio spread over them, one frame's worth before each frame) to MP4 bytes."""
    chunks: list[bytes] = []
    video = video or info(frames[0].width, frames[0].height)
    writer = OutputWriter(chunks.append, video, encoding, audio_codec, threads=threads)
    per_frame = int(round(48000 / video.fps)) if audio is None else None
    for i, frame in enumerate(frames):
        writer.write_frame(frame, i)
        if audio is None:
            writer.write_audio(synth.tone(per_frame / 48000, 48000))
    if audio is not None:
        writer.write_audio(audio)
    writer.close()
    return b"".join(chunks), writer


def planes(frame: av.VideoFrame) -> list[np.ndarray]:
    """Y, U, V of a yuv420p frame without the line padding."""
    out = []
    for plane in frame.planes:
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        out.append(rows[:, :plane.width])
    return out


def x264_options(data: bytes) -> dict[str, str]:
    """The option string x264 writes into its SEI message, as a dict."""
    match = re.search(rb"x264 - core .*? - options: ([ -~]*)", data)
    assert match, "no x264 SEI in the output"
    return dict(item.split("=", 1) for item in match.group(1).decode().split() if "=" in item)


def video_packets(data: bytes) -> list[av.Packet]:
    with av.open(io.BytesIO(data)) as container:
        return [p for p in container.demux(container.streams.video[0]) if p.size]


def nal_types(packet: av.Packet) -> set[int]:
    """NAL unit types in an AVCC (4-byte length prefixed) packet."""
    raw, types, pos = bytes(packet), set(), 0
    while pos + 4 <= len(raw):
        size = int.from_bytes(raw[pos:pos + 4], "big")
        types.add(raw[pos + 4] & 0x1F)
        pos += 4 + size
    return types


def test_default_lossy_round_trip_frames_timestamps_idr_and_opus():
    data, writer = encode(numbered_frames(50))
    probe = synth.probe(data)
    assert writer.frames_written == 50 and probe["frame_count"] == 50
    assert probe["video_codec"] == "h264" and probe["pix_fmt"] == "yuv420p"
    assert probe["fps"] == 25
    # Timestamps start at 0 and step by exactly one frame.
    np.testing.assert_allclose(probe["pts"], np.arange(50) / 25, atol=1e-6)
    # Default: an IDR every 8 frames.
    assert probe["keyframes"] == list(range(0, 50, 8))
    assert probe["audio_codec"] == "opus" and probe["audio_rate"] == 48000 and probe["audio_channels"] == 1
    assert abs(probe["audio_end"] - 2.0) < 1 / 25
    assert probe["audio_start"] <= 0.0
    decoded = [synth.read_frame_number(f.to_ndarray(format="gray")) for f in synth.decode_frames(data)]
    assert decoded == list(range(50))


def test_idr_interval_is_exact_and_every_keyframe_is_an_idr_whatever_the_input_gop(tmp_path):
    # Decoded input frames carry their own picture types (I every 7 frames here): the output ignores them.
    source = synth.make_video(tmp_path / "in.mp4", seconds=2.0, gop=7)
    frames = synth.decode_frames(source)
    data, _ = encode(frames, VideoEncodingSpec(mode=EncodingMode.LOSSY, bitrate_mbps=2, idr_interval=5))
    assert synth.probe(data)["keyframes"] == list(range(0, 50, 5))
    packets = video_packets(data)
    assert len(packets) == 50
    for index, packet in enumerate(sorted(packets, key=lambda p: p.pts)):
        assert packet.is_keyframe == (index % 5 == 0)
        assert (5 in nal_types(packet)) == (index % 5 == 0), f"frame {index}: NAL types {nal_types(packet)}"


def test_bitrate_is_honoured_on_a_noisy_clip():
    # Noise needs far more than 2 Mbps (raw: 69 Mbps), so the rate control is what limits the size.
    frames = noise_frames(75, 320, 240)
    data, _ = encode(frames, VideoEncodingSpec(mode=EncodingMode.LOSSY, bitrate_mbps=2, idr_interval=8))
    video_bits = 8 * sum(p.size for p in video_packets(data))
    mbps = video_bits / (75 / 25) / 1e6
    assert 1.5 <= mbps <= 2.5, mbps
    options = x264_options(data)
    assert options["bitrate"] == "2000" and options["vbv_maxrate"] == "2000" and options["vbv_bufsize"] == "2000"


def test_lossless_round_trip_is_bit_identical_in_every_plane(tmp_path):
    source = synth.make_video(tmp_path / "in.mp4", seconds=1.0, size=(96, 64), gop=4)
    frames = synth.decode_frames(source) + noise_frames(5, 96, 64)
    data, _ = encode(frames, LOSSLESS, AudioCodec.MP3)
    out = synth.decode_frames(data)
    assert len(out) == len(frames)
    for index, (a, b) in enumerate(zip(frames, out)):
        for plane, (pa, pb) in enumerate(zip(planes(a), planes(b))):
            assert pa.shape == pb.shape and np.array_equal(pa, pb), (index, plane)
    assert x264_options(data)["qp"] == "0"


def test_lossy_is_not_bit_identical_so_the_lossless_check_can_fail():
    frames = noise_frames(4, 96, 64)
    data, _ = encode(frames, VideoEncodingSpec(mode=EncodingMode.LOSSY, bitrate_mbps=1, idr_interval=8))
    out = synth.decode_frames(data)
    assert not np.array_equal(planes(frames[1])[0], planes(out[1])[0])


def test_mp3_audio_is_sample_accurate_from_zero():
    rate = 48000
    audio = np.random.default_rng(3).uniform(-0.5, 0.5, 2 * rate).astype(np.float32)
    data, writer = encode(numbered_frames(50), LOSSY, AudioCodec.MP3, audio=audio)
    probe = synth.probe(data)
    assert probe["audio_codec"] in ("mp3", "mp3float") and probe["audio_rate"] == rate
    assert writer.audio_samples_written == 2 * rate
    assert abs(probe["audio_end"] - 2.0) < 1 / 25
    # Place decoded samples by their timestamps: the sample at time t is the input sample at time t.
    placed = np.zeros(3 * rate, np.float32)
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(container.streams.audio[0]):
            start = int(round(frame.pts * frame.time_base * rate))
            samples = frame.to_ndarray().reshape(-1)
            if start < 0:
                samples, start = samples[-start:], 0
            placed[start:start + samples.size] = samples[: placed.size - start]
    lags = list(range(-600, 601))
    scores = [float(np.dot(placed[5000 + lag:80000 + lag], audio[5000:80000])) for lag in lags]
    assert lags[int(np.argmax(scores))] == 0


def test_opus_audio_is_aligned_with_the_video_start():
    rate = 48000
    audio = np.random.default_rng(4).uniform(-0.5, 0.5, rate).astype(np.float32)
    data, _ = encode(numbered_frames(25), LOSSY, AudioCodec.OPUS, audio=audio)
    decoded, _ = synth.decode_audio(data)
    lags = list(range(-600, 601))
    scores = [float(np.dot(decoded[5000 + lag:40000 + lag], audio[5000:40000])) for lag in lags]
    assert lags[int(np.argmax(scores))] == 0


def test_custom_options_reach_x264():
    spec = custom(preset="ultrafast", tune="zerolatency", profile="baseline", crf=20, bframes=0, idr_interval=6,
                  max_bitrate_mbps=3)
    data, _ = encode(numbered_frames(20), spec)
    options = x264_options(data)
    assert options["rc"] == "crf" and options["crf"] == "20.0"
    assert options["bframes"] == "0" and options["keyint"] == "6" and options["vbv_maxrate"] == "3000"
    assert options["cabac"] == "0"  # baseline profile (and the ultrafast preset)
    assert synth.probe(data)["keyframes"] == [0, 6, 12, 18]
    with av.open(io.BytesIO(data)) as container:
        assert "Baseline" in container.streams.video[0].codec_context.profile


def test_custom_qp_bitrate_and_bframes():
    data, _ = encode(numbered_frames(16), custom(qp=30, bframes=2))
    options = x264_options(data)
    assert options["rc"] == "cqp" and options["qp"] == "30" and options["bframes"] == "2"
    np.testing.assert_allclose(synth.probe(data)["pts"], np.arange(16) / 25, atol=1e-6)
    data, _ = encode(numbered_frames(16), custom(bitrate_mbps=1.5))
    options = x264_options(data)
    assert options["rc"] == "abr" and options["bitrate"] == "1500" and options["keyint"] == "8"


@pytest.mark.parametrize(("options", "message"), [
    ({"gop": 5}, ("output_video_encoding.custom_encoding: unknown key 'gop'; supported keys: bframes, bitrate, "
                  "bitrate_mbps, control-rate, crf, idr_interval, idrinterval, iframeinterval, max_bitrate_mbps, "
                  "maxbitrate, preset, preset-id, profile, qp, tune, tuning-info-id")),
    ({"preset": "warp-speed"}, ("output_video_encoding.custom_encoding['preset']: 'warp-speed' is not one of fast, "
                                "faster, medium, placebo, slow, slower, superfast, ultrafast, veryfast, veryslow")),
    ({"crf": True}, "output_video_encoding.custom_encoding['crf']: expected number, got True"),
    ({"bframes": 17}, "output_video_encoding.custom_encoding['bframes']: must be between 0 and 16, got 17"),
    ({"max_bitrate_mbps": 0.0}, ("output_video_encoding.custom_encoding['max_bitrate_mbps']: must be between 0 "
                                 "(exclusive) and 1000, got 0.0")),
    ({"crf": 18, "qp": 20}, "output_video_encoding.custom_encoding: give either 'crf' or 'qp', not both"),
    ({"qp": 0, "profile": "main"}, ("output_video_encoding.custom_encoding: qp=0 (lossless) needs profile 'high444' "
                                    "(got 'main'); drop 'profile' or set it to 'high444'")),
    ({"crf": 0.5, "profile": "high"}, ("output_video_encoding.custom_encoding: crf=0.5 (below 1: lossless) needs "
                                       "profile 'high444' (got 'high'); drop 'profile' or set it to 'high444'")),
])
def test_config_validation_refuses_bad_custom_encodings_before_the_echo(options, message):
    # Every rule is judged by config.from_proto, before the config echo and before the job starts.
    with pytest.raises(InvalidInput, match=f"^{re.escape(message)}$"):
        config.from_proto(wire_custom(**options))


def test_a_wrapper_type_url_over_bytes_that_do_not_parse_is_invalid_input():
    # Found by the fuzzer (an Any naming Int32Value whose bytes are no Int32Value): was INTERNAL (DecodeError).
    from google.protobuf import any_pb2

    msg = wire_custom()
    msg.output_video_encoding.custom_encoding.custom["bitrate"].CopyFrom(
        any_pb2.Any(type_url="type.googleapis.com/google.protobuf.Int32Value", value=b"\xff"))
    with pytest.raises(InvalidInput, match=r"^output_video_encoding.custom_encoding\['bitrate'\]: the value's bytes "
                                           r"are not a valid Int32Value; pack the value with Any.Pack$"):
        config.from_proto(msg)


def test_a_huge_value_or_key_is_quoted_short():
    # Found by the fuzzer (seed 19, case 1632): a 10,000-character string was echoed whole in the message.
    with pytest.raises(InvalidInput) as info:
        config.from_proto(wire_custom(bframes="x" * 10000))
    assert str(info.value) == (f"output_video_encoding.custom_encoding['bframes']: expected int, got "
                               f"'{'x' * 59}... (10002 characters)")
    with pytest.raises(InvalidInput, match=r"^output_video_encoding.custom_encoding: unknown key 'yyy.*\(302 "
                                           r"characters\); supported keys: bframes"):
        config.from_proto(wire_custom(**{"y" * 300: 1}))


@pytest.mark.parametrize("options", [{"qp": 0}, {"qp": 0, "profile": "high444"}, {"crf": 0},
                                     {"crf": 0.5, "profile": "high444"}, {"crf": 1, "profile": "baseline"}])
def test_lossless_rate_control_the_config_accepts_is_what_x264_accepts(options):
    spec = config.from_proto(wire_custom(**options)).video_encoding
    OutputWriter(lambda b: None, info(), spec, AudioCodec.OPUS).abort()


def test_config_echo_returns_the_custom_keys_as_sent():
    sent = wire_custom(preset="fast", crf=18, max_bitrate_mbps=2.5, bframes=0)
    echo = config.to_proto(config.from_proto(sent)).output_video_encoding.custom_encoding.custom
    expected = {"preset": (wrappers_pb2.StringValue, "fast"), "crf": (wrappers_pb2.Int64Value, 18),
                "max_bitrate_mbps": (wrappers_pb2.FloatValue, 2.5), "bframes": (wrappers_pb2.Int64Value, 0)}
    assert sorted(echo) == sorted(expected)
    for key, (wrapper, value) in expected.items():
        unpacked = wrapper()
        assert echo[key].Unpack(unpacked) and unpacked.value == value, key


def test_encoder_options_mapping():
    lossy = encoder_options(VideoEncodingSpec(mode=EncodingMode.LOSSY, bitrate_mbps=30, idr_interval=8), 25)
    assert lossy.bit_rate == 30_000_000 and lossy.gop_size == 8
    assert lossy.options["maxrate"] == "30000000" and lossy.options["bufsize"] == "30000000"
    assert "keyint=8:min-keyint=8:scenecut=0:open-gop=0" in lossy.options["x264-params"]
    lossless = encoder_options(LOSSLESS, Fraction(30000, 1001))
    assert lossless.options["qp"] == "0" and lossless.bit_rate is None and lossless.gop_size == 30
    spec = encoder_options(custom(preset="slow", crf=18.5, bframes=3, idr_interval=12, max_bitrate_mbps=4), 25)
    assert spec.options["preset"] == "slow" and spec.options["crf"] == "18.5" and spec.bit_rate is None
    assert spec.options["maxrate"] == "4000000" and spec.gop_size == 12
    assert spec.options["x264-params"].endswith(":bframes=3")


def test_ntsc_rate_timestamps():
    fps = Fraction(30000, 1001)
    data, _ = encode(numbered_frames(12), video=info(fps=fps))
    probe = synth.probe(data)
    assert probe["fps"] == fps
    np.testing.assert_allclose(probe["pts"], np.arange(12) * 1001 / 30000, atol=1e-6)


def test_bytes_reach_the_sink_before_close():
    chunks: list[bytes] = []
    writer = OutputWriter(chunks.append, info(), LOSSY, AudioCodec.OPUS)
    for i, frame in enumerate(numbered_frames(40)):
        writer.write_frame(frame, i)
        writer.write_audio(np.zeros(1920, np.float32))
    early = sum(map(len, chunks))
    assert early > 0 and early == writer.bytes_written
    # The early bytes are the start of a playable file: header plus whole fragments.
    assert b"ftyp" in chunks[0][:16] and b"moof" in b"".join(chunks)
    writer.close()
    assert sum(map(len, chunks)) > early
    assert synth.probe(b"".join(chunks))["frame_count"] == 40


def test_other_pixel_formats_are_converted():
    frames = [av.VideoFrame.from_ndarray(synth.draw_frame(i, 160, 120), format="rgb24") for i in range(5)]
    data, _ = encode(frames)
    decoded = [synth.read_frame_number(f.to_ndarray(format="gray")) for f in synth.decode_frames(data)]
    assert decoded == list(range(5))


def test_thread_count_is_passed_to_x264():
    data, _ = encode(numbered_frames(3), threads=1)
    assert x264_options(data)["threads"] == "1"


def test_odd_frame_size_is_invalid_input():
    with pytest.raises(InvalidInput, match="frame size 161x120 has an odd side"):
        OutputWriter(lambda b: None, info(161, 120), LOSSY, AudioCodec.OPUS)


def test_out_of_order_frames_are_an_internal_error():
    writer = OutputWriter(lambda b: None, info(), LOSSY, AudioCodec.OPUS)
    frames = numbered_frames(2)
    writer.write_frame(frames[0], 0)
    with pytest.raises(InternalError, match="frame 2 written when frame 1 was expected"):
        writer.write_frame(frames[1], 2)
    writer.abort()


def test_a_failing_sink_stops_the_writer_with_its_own_error():
    def sink(data: bytes) -> None:
        raise Cancelled("client went away")

    writer = OutputWriter(sink, info(), LOSSY, AudioCodec.OPUS)
    with pytest.raises(Cancelled, match="client went away"):
        for i, frame in enumerate(numbered_frames(40)):
            writer.write_frame(frame, i)
            writer.write_audio(np.zeros(1920, np.float32))
        writer.close()
    writer.abort()  # safe after a failure


def test_abort_sends_nothing_more_and_never_raises():
    chunks: list[bytes] = []
    writer = OutputWriter(chunks.append, info(), LOSSY, AudioCodec.MP3)
    for i, frame in enumerate(numbered_frames(20)):
        writer.write_frame(frame, i)
    sent = sum(map(len, chunks))
    writer.abort()
    writer.abort()
    assert sum(map(len, chunks)) == sent
    with pytest.raises(InternalError, match="write after close"):
        writer.write_frame(numbered_frames(1)[0], 20)


def test_real_clip_lossless_round_trip_keeps_decoded_planes_and_odd_frame_rate(media):
    with av.open(str(media("talking_1.mp4"))) as container:
        stream = container.streams.video[0]
        fps = Fraction(stream.average_rate)
        frames = []
        for frame in container.decode(stream):
            frames.append(frame)
            if len(frames) == 12:
                break
    data, _ = encode(frames, LOSSLESS, video=info(frames[0].width, frames[0].height, fps))
    out = synth.decode_frames(data)
    assert len(out) == 12
    for a, b in zip(frames, out):
        assert all(np.array_equal(pa, pb) for pa, pb in zip(planes(a), planes(b)))
    np.testing.assert_allclose(synth.probe(data)["pts"], np.arange(12) / float(fps), atol=1e-4)


@pytest.mark.parametrize(("codec", "kbps"), [(AudioCodec.OPUS, 96), (AudioCodec.MP3, 128)])
def test_audio_bitrate_suits_speech_over_music(codec, kbps):
    audio = np.random.default_rng(5).uniform(-0.3, 0.3, 2 * 48000).astype(np.float32)
    data, _ = encode(numbered_frames(50), LOSSY, codec, audio=audio)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        size = sum(p.size for p in container.demux(stream) if p.size)
    assert size * 8 / 2 / 1000 == pytest.approx(kbps, rel=0.2)


@pytest.mark.parametrize("options", [{"preset": "warp-speed"}, {"qp": 0, "profile": "main"}])
def test_options_x264_refuses_at_open_are_an_internal_error_naming_them(options):
    # Bypasses config validation on purpose: it refuses everything x264 would, so a refusal that still
    # reaches the encoder is our bug, reported with the options that reproduce it.
    with pytest.raises(InternalError, match="cannot open the H.264 encoder with the options .*"
                                            + re.escape(repr(next(iter(options.values()))))):
        OutputWriter(lambda b: None, info(), custom(**options), AudioCodec.OPUS)


# NVIDIA's encoder properties (what NVIDIA's client sends with --custom-encoding-params) ---------------------

NVIDIA_EXAMPLE = {"bitrate": 5000000, "idrinterval": 30, "maxbitrate": 5000000, "tuning-info-id": 4}


@pytest.mark.parametrize(("options", "x264", "bit_rate", "gop"), [
    # NVIDIA's own example: no control-rate is the plugin's default, CBR: VBV max rate and buffer = bitrate.
    (NVIDIA_EXAMPLE, {"maxrate": "5000000", "bufsize": "5000000"}, 5_000_000, 30),
    ({"bitrate": 2_000_000, "control-rate": 1, "maxbitrate": 8_000_000}, {"maxrate": "2000000"}, 2_000_000, 8),
    # VBR: the peak is maxbitrate, or 1.2 x bitrate (the plugin's default), never below the bitrate.
    ({"bitrate": 2_000_000, "control-rate": 0, "maxbitrate": 3_000_000}, {"maxrate": "3000000"}, 2_000_000, 8),
    ({"bitrate": 2_000_000, "control-rate": 0}, {"maxrate": "2400000", "bufsize": "2400000"}, 2_000_000, 8),
    ({"bitrate": 2_000_000, "control-rate": 0, "maxbitrate": 1_000_000}, {"maxrate": "2000000"}, 2_000_000, 8),
    ({"control-rate": 1}, {"maxrate": "4000000"}, 4_000_000, 8),  # the plugin's default bitrate
    ({"control-rate": 2, "qp": 24}, {"qp": "24"}, None, 8),
    ({"bitrate_mbps": 3, "control-rate": 1}, {"maxrate": "3000000"}, 3_000_000, 8),
    # Every I-frame is an IDR here: the smaller of the two intervals is the GOP.
    ({"idrinterval": 30, "iframeinterval": 10}, {}, None, 10),
    ({"idr_interval": 6, "iframeinterval": 60}, {}, None, 6),
    ({"iframeinterval": 12}, {}, None, 12),
    ({"profile": 0}, {"profile": "baseline"}, None, 8),
    ({"profile": 7, "qp": 0}, {"profile": "high444", "qp": "0"}, None, 8),
    ({"profile": "High"}, {"profile": "high"}, None, 8),
    ({"preset-id": 7, "tuning-info-id": 1}, {"preset": "veryfast"}, None, 8),  # NVENC-only: no x264 effect
])
def test_nvidia_properties_map_to_x264(options, x264, bit_rate, gop):
    settings = encoder_options(config.from_proto(wire_custom(**options)).video_encoding, 25)
    assert {k: settings.options.get(k) for k in x264} == x264
    assert settings.bit_rate == bit_rate and settings.gop_size == gop
    assert f"keyint={gop}:min-keyint={gop}" in settings.options["x264-params"]
    if "qp" not in x264 and bit_rate is None:
        assert "maxrate" not in settings.options and "qp" not in settings.options


def test_nvidia_example_reaches_x264():
    # The options x264 was opened with are in its SEI; the IDR frames are where the example asks.
    data, _ = encode(noise_frames(75, 320, 240), config.from_proto(wire_custom(**NVIDIA_EXAMPLE)).video_encoding)
    options = x264_options(data)
    assert options["rc"] == "cbr" and options["bitrate"] == "5000"
    assert options["vbv_maxrate"] == "5000" and options["vbv_bufsize"] == "5000" and options["keyint"] == "30"
    assert synth.probe(data)["keyframes"] == [0, 30, 60]
    mbps = 8 * sum(p.size for p in video_packets(data)) / 3 / 1e6
    assert 3.5 <= mbps <= 6.0, mbps


def test_nvidia_vbr_and_profile_reach_x264():
    spec = config.from_proto(wire_custom(**{"bitrate": 1_000_000, "control-rate": 0, "iframeinterval": 5,
                                              "profile": 0})).video_encoding
    data, _ = encode(numbered_frames(20), spec)
    options = x264_options(data)
    assert options["rc"] == "abr" and options["bitrate"] == "1000" and options["vbv_maxrate"] == "1200"
    assert options["cabac"] == "0" and synth.probe(data)["keyframes"] == [0, 5, 10, 15]
    with av.open(io.BytesIO(data)) as container:
        assert "Baseline" in container.streams.video[0].codec_context.profile


def _packed(wrapper, value) -> lipsync_pb2.LipsyncConfig:
    msg = lipsync_pb2.LipsyncConfig(input_audio_codec=audio_pb2.AUDIO_CODEC_WAV)
    msg.output_video_encoding.custom_encoding.custom["idrinterval"].Pack(wrapper(value=value))
    return msg


@pytest.mark.parametrize("wrapper", [wrappers_pb2.Int32Value, wrappers_pb2.Int64Value, wrappers_pb2.UInt32Value,
                                     wrappers_pb2.UInt64Value, wrappers_pb2.FloatValue, wrappers_pb2.DoubleValue])
def test_every_number_wrapper_is_accepted_for_an_int_property(wrapper):
    # NVIDIA's client packs an int as Int32Value or Int64Value by range and a float as FloatValue or DoubleValue;
    # a whole float is taken as the int it is.
    custom = config.from_proto(_packed(wrapper, 30)).video_encoding.custom
    assert custom.idrinterval == 30 and isinstance(custom.idrinterval, int)


@pytest.mark.parametrize(("wrapper", "value", "message"), [
    (wrappers_pb2.FloatValue, 2.5, "expected int, got 2.5 (not a whole number)"),
    (wrappers_pb2.DoubleValue, float("inf"), "expected int, got inf (not a whole number)"),
    (wrappers_pb2.BoolValue, True, "expected int, got True"),
    (wrappers_pb2.StringValue, "30", "expected int, got '30'"),
    (wrappers_pb2.Int64Value, 5000, "must be between 1 and 1000, got 5000"),
])
def test_wrappers_of_the_wrong_kind_are_refused(wrapper, value, message):
    with pytest.raises(InvalidInput, match=f"^output_video_encoding.custom_encoding\\['idrinterval'\\]: "
                                           f"{re.escape(message)}$"):
        config.from_proto(_packed(wrapper, value))


def test_string_and_double_wrappers_where_the_key_takes_them():
    msg = lipsync_pb2.LipsyncConfig(input_audio_codec=audio_pb2.AUDIO_CODEC_WAV)
    custom_map = msg.output_video_encoding.custom_encoding.custom
    custom_map["profile"].Pack(wrappers_pb2.StringValue(value="High444"))
    custom_map["crf"].Pack(wrappers_pb2.DoubleValue(value=0.5))
    custom = config.from_proto(msg).video_encoding.custom
    assert custom.profile == "High444" and custom.x264_profile == "high444" and custom.crf == 0.5
    custom_map["crf"].Pack(wrappers_pb2.BytesValue(value=b"0"))
    with pytest.raises(InvalidInput, match=r"value type .*BytesValue.* is not supported; use a protobuf wrapper"):
        config.from_proto(msg)


@pytest.mark.parametrize(("options", "message"), [
    ({"bitrate": 5000000, "bitrate_mbps": 5}, "'bitrate_mbps' and 'bitrate' set the same thing; give one of them"),
    ({"idrinterval": 30, "idr_interval": 8}, "'idr_interval' and 'idrinterval' set the same thing; give one of them"),
    ({"control-rate": 2}, "control-rate 2 (constant QP) needs 'qp' (0 to 51)"),
    ({"control-rate": 2, "qp": 20, "bitrate": 5000000}, "control-rate 2 (constant QP) takes no bitrate; drop bitrate"),
    ({"control-rate": 0, "crf": 20}, ("control-rate 0 (VBR) is a bitrate mode; drop 'crf' or use control-rate 2 "
                                      "(constant QP)")),
    ({"control-rate": 3}, "['control-rate']: 3 is not one of 0, 1, 2"),
    ({"profile": 1}, "['profile']: 1 is not one of 0, 2, 4, 7, baseline, high, high444, main"),
    ({"profile": 2, "qp": 0}, "qp=0 (lossless) needs profile 'high444' (got 2); drop 'profile' or set it to 'high444'"),
    ({"preset-id": 8}, "['preset-id']: must be between 1 and 7, got 8"),
    ({"tuning-info-id": 0}, "['tuning-info-id']: must be between 1 and 4, got 0"),
    ({"bitrate": 999}, "['bitrate']: must be between 1000 and 1000000000, got 999"),
    ({"maxbitrate": 2_000_000_000}, "['maxbitrate']: must be between 1000 and 1000000000, got 2000000000"),
    ({"num-B-Frames": 0}, "unknown key 'num-B-Frames'; supported keys: bframes, bitrate, bitrate_mbps, control-rate"),
])
def test_nvidia_properties_are_validated_before_the_echo(options, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        config.from_proto(wire_custom(**options))


def test_nvidia_properties_echo_by_their_names_and_hardware_hints_are_set_apart():
    sent = wire_custom(**NVIDIA_EXAMPLE, **{"preset-id": 3, "control-rate": 1})
    cfg = config.from_proto(sent)
    assert cfg.video_encoding.custom.ignored_hints() == {"preset-id": 3, "tuning-info-id": 4}
    echo = config.to_proto(cfg).output_video_encoding.custom_encoding.custom
    assert sorted(echo) == sorted([*NVIDIA_EXAMPLE, "preset-id", "control-rate"])
    unpacked = wrappers_pb2.Int64Value()
    assert echo["control-rate"].Unpack(unpacked) and unpacked.value == 1


def edit_list_media_time(data: bytes, handler: bytes) -> int | None:
    """media_time of the (single) edit of the track whose hdlr is `handler` (b"soun", b"vide"); None: no edit list."""
    import struct

    def boxes(buf: bytes, start: int, end: int):
        while start + 8 <= end:
            size, kind = struct.unpack(">I4s", buf[start:start + 8])
            yield kind, start + 8, start + size
            start += size

    moov = next(b for b in boxes(data, 0, len(data)) if b[0] == b"moov")
    for kind, start, end in boxes(data, moov[1], moov[2]):
        if kind != b"trak":
            continue
        children = {k: (s, e) for k, s, e in boxes(data, start, end)}
        mdia = {k: (s, e) for k, s, e in boxes(data, *children[b"mdia"])}
        if data[mdia[b"hdlr"][0] + 8:mdia[b"hdlr"][0] + 12] != handler:
            continue
        if b"edts" not in children:
            return None
        elst = {k: s for k, s, _ in boxes(data, *children[b"edts"])}[b"elst"]
        version, count = data[elst], struct.unpack(">I", data[elst + 4:elst + 8])[0]
        assert count == 1
        if version:  # entries: segment_duration, media_time (64 bits each in version 1, else 32)
            return struct.unpack(">q", data[elst + 16:elst + 24])[0]
        return struct.unpack(">i", data[elst + 12:elst + 16])[0]
    raise AssertionError(f"no {handler!r} track")


@pytest.mark.parametrize(("codec", "priming"), [(AudioCodec.MP3, 1105), (AudioCodec.OPUS, 312)])
def test_the_audio_edit_list_skips_the_encoder_priming(codec, priming):
    # The encoders start with `priming` samples of delay (LAME: 576 encoder + 529 decoder samples; Opus: its
    # pre-skip); the audio track's edit list starts the presentation after them, so a player that honours it
    # plays the first input sample at 0. Fragmented output carries the edit list thanks to delay_moov.
    data, _ = encode(numbered_frames(10), LOSSY, codec)
    assert edit_list_media_time(data, b"soun") == priming
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.audio[0].start_time == -priming  # FFmpeg reads it as the first sample's time
