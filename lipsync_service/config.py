"""The config's wire boundary: a `LipsyncConfig` checked into a `job.JobConfig`, and the config echo back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import wrappers_pb2
from google.protobuf.message import DecodeError, Message

from lipsync_service._proto.nvidia.ai4m.audio.v1 import audio_pb2
from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2
from lipsync_service._proto.nvidia.ai4m.video.v1 import video_pb2
from lipsync_service.errors import InvalidInput
from lipsync_service.job import (
    CUSTOM_ENCODING_FIELDS,
    CUSTOM_ENCODING_KEYS,
    DEFAULT_BITRATE_MBPS,
    DEFAULT_IDR_INTERVAL,
    LOSSLESS_PROFILE,
    MAX_BITRATE_MBPS,
    MAX_IDR_INTERVAL,
    AudioCodec,
    BackgroundAudioSpec,
    ControlRate,
    CustomEncoding,
    EncodingKey,
    EncodingMode,
    ExtendAudio,
    ExtendVideo,
    JobConfig,
    VideoEncodingSpec,
)

_IN_CODECS = {audio_pb2.AUDIO_CODEC_WAV: AudioCodec.WAV, audio_pb2.AUDIO_CODEC_MP3: AudioCodec.MP3}
_OUT_CODECS = {audio_pb2.AUDIO_CODEC_OPUS: AudioCodec.OPUS, audio_pb2.AUDIO_CODEC_MP3: AudioCodec.MP3}
_CODEC_TO_WIRE = {AudioCodec.WAV: audio_pb2.AUDIO_CODEC_WAV, AudioCodec.MP3: audio_pb2.AUDIO_CODEC_MP3,
                  AudioCodec.OPUS: audio_pb2.AUDIO_CODEC_OPUS}
_EXTEND_AUDIO = {lipsync_pb2.EXTEND_AUDIO_UNSPECIFIED: ExtendAudio.UNSPECIFIED,
                 lipsync_pb2.EXTEND_AUDIO_SILENCE: ExtendAudio.SILENCE}
_EXTEND_VIDEO = {lipsync_pb2.EXTEND_VIDEO_UNSPECIFIED: ExtendVideo.UNSPECIFIED,
                 lipsync_pb2.EXTEND_VIDEO_FORWARD: ExtendVideo.FORWARD,
                 lipsync_pb2.EXTEND_VIDEO_REVERSE: ExtendVideo.REVERSE}


def _codec_name(value: int) -> str:
    try:
        return audio_pb2.AudioCodec.Name(value)
    except ValueError:
        return str(value)


_WRAPPERS = (wrappers_pb2.BoolValue, wrappers_pb2.Int32Value, wrappers_pb2.Int64Value, wrappers_pb2.UInt32Value,
             wrappers_pb2.UInt64Value, wrappers_pb2.FloatValue, wrappers_pb2.DoubleValue, wrappers_pb2.StringValue)


def _unpack_any(key: str, value: Any) -> Any:
    for wrapper in _WRAPPERS:
        if value.Is(wrapper.DESCRIPTOR):
            msg = wrapper()
            try:
                value.Unpack(msg)
            except DecodeError as exc:
                raise InvalidInput(
                    f"output_video_encoding.custom_encoding[{_quoted(key)}]: the value's bytes are not a valid "
                    f"{wrapper.DESCRIPTOR.name}; pack the value with Any.Pack"
                ) from exc
            return msg.value
    raise InvalidInput(
        f"output_video_encoding.custom_encoding[{_quoted(key)}]: value type {_quoted(value.type_url)} is not "
        "supported; "
        "use a protobuf wrapper (BoolValue, Int32Value, Int64Value, UInt32Value, UInt64Value, FloatValue, "
        "DoubleValue, StringValue)"
    )


_CUSTOM = "output_video_encoding.custom_encoding"
# A client's value or key quoted in a message: enough to recognise it, not the whole of a 10,000-character string.
_QUOTE_CHARS = 60


def _quoted(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _QUOTE_CHARS else f"{text[:_QUOTE_CHARS]}... ({len(text)} characters)"
# Our key and NVIDIA's property for the same setting: a client gives one of them.
_SAME_SETTING = (("bitrate_mbps", "bitrate"), ("max_bitrate_mbps", "maxbitrate"), ("idr_interval", "idrinterval"))
_RATE_KEYS = ("bitrate_mbps", "bitrate", "max_bitrate_mbps", "maxbitrate")


def _checked_value(key: str, spec: EncodingKey, value: Any) -> Any:
    """One key's value checked against its EncodingKey: type, choices, range.

    A bool is never a number. A float where only an int is accepted (NVIDIA's client packs a JSON 30.0 as a
    FloatValue) is taken when it is a whole number, as that int; any other fraction is refused.
    """
    where = f"{_CUSTOM}[{_quoted(key)}]"
    if isinstance(value, float) and int in spec.types and float not in spec.types:
        if not value.is_integer():
            raise InvalidInput(f"{where}: expected {spec.type_name}, got {_quoted(value)} (not a whole number)")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, spec.types):
        raise InvalidInput(f"{where}: expected {spec.type_name}, got {_quoted(value)}")
    if spec.choices:
        names = [c.lower() for c in spec.choices if isinstance(c, str)]
        accepted = value.lower() in names if isinstance(value, str) else value in spec.choices
        if not accepted:
            raise InvalidInput(f"{where}: {_quoted(value)} is not one of "
                               f"{', '.join(sorted(str(c) for c in spec.choices))}")
    if spec.low is not None and spec.high is not None and isinstance(value, (int, float)):
        above_low = value > spec.low if spec.low_exclusive else value >= spec.low
        if not (above_low and value <= spec.high):
            raise InvalidInput(f"{where}: must be {spec.range_text}, got {value}")
    return value


def validate_custom_encoding(options: Mapping[str, Any]) -> CustomEncoding:
    """Check a custom encoding map against the documented keys and the combinations x264 refuses.

    Every rule lives here, so a bad custom encoding is refused before the config echo and the encoder
    only maps the typed values.

    Args:
        options: key -> value, unpacked from the protobuf wrappers.

    Returns:
        The typed settings (keys not given stay None).

    Raises:
        InvalidInput: unknown key, wrong type, out-of-range value, or a combination x264 cannot honour.
    """
    out: dict[str, Any] = {}
    for key, value in options.items():
        spec = CUSTOM_ENCODING_KEYS.get(key)
        if spec is None:
            raise InvalidInput(
                f"{_CUSTOM}: unknown key {_quoted(key)}; supported keys: {', '.join(sorted(CUSTOM_ENCODING_KEYS))}"
            )
        out[CUSTOM_ENCODING_FIELDS[key]] = _checked_value(key, spec, value)
    custom = CustomEncoding(**out)
    given = custom.given()
    if custom.crf is not None and custom.qp is not None:
        raise InvalidInput(f"{_CUSTOM}: give either 'crf' or 'qp', not both")
    for ours, nvidia in _SAME_SETTING:
        if ours in given and nvidia in given:
            raise InvalidInput(f"{_CUSTOM}: {ours!r} and {nvidia!r} set the same thing; give one of them")
    rates = [key for key in _RATE_KEYS if key in given]
    if custom.control_rate == ControlRate.CONSTANT_QP:
        if custom.qp is None:
            raise InvalidInput(f"{_CUSTOM}: control-rate 2 (constant QP) needs 'qp' (0 to 51)")
        if rates:
            raise InvalidInput(f"{_CUSTOM}: control-rate 2 (constant QP) takes no bitrate; drop {', '.join(rates)}")
    elif custom.control_rate is not None and (custom.qp is not None or custom.crf is not None):
        mode = ControlRate(custom.control_rate).name
        raise InvalidInput(f"{_CUSTOM}: control-rate {custom.control_rate} ({mode}) is a bitrate mode; drop "
                           f"{'qp' if custom.qp is not None else 'crf'!r} or use control-rate 2 (constant QP)")
    # x264 codes losslessly at qp 0 and at any crf below 1 (8-bit) and refuses that in every profile below
    # High 4:4:4, but only when the encoder opens, after the config echo: judge it here instead.
    lossless = ""
    if custom.qp == 0:
        lossless = "qp=0 (lossless)"
    elif custom.crf is not None and custom.crf < 1:
        lossless = f"crf={custom.crf:g} (below 1: lossless)"
    if lossless and custom.x264_profile not in (None, LOSSLESS_PROFILE):
        raise InvalidInput(
            f"{_CUSTOM}: {lossless} needs profile {LOSSLESS_PROFILE!r} "
            f"(got {custom.profile!r}); drop 'profile' or set it to {LOSSLESS_PROFILE!r}"
        )
    return custom


def _video_encoding(msg: video_pb2.VideoEncoding) -> VideoEncodingSpec:
    kind = msg.WhichOneof("encoding_type")
    if kind is None:
        return VideoEncodingSpec()
    if kind == "lossless":
        if not msg.lossless:
            # lossless=false carries no settings: use the lossy defaults.
            return VideoEncodingSpec()
        return VideoEncodingSpec(mode=EncodingMode.LOSSLESS)
    if kind == "lossy":
        bitrate = msg.lossy.bitrate_mbps if msg.lossy.HasField("bitrate_mbps") else DEFAULT_BITRATE_MBPS
        idr = msg.lossy.idr_interval if msg.lossy.HasField("idr_interval") else DEFAULT_IDR_INTERVAL
        if not 1 <= bitrate <= MAX_BITRATE_MBPS:
            raise InvalidInput(
                f"output_video_encoding.lossy.bitrate_mbps must be between 1 and {MAX_BITRATE_MBPS}, got {bitrate}"
            )
        if not 1 <= idr <= MAX_IDR_INTERVAL:
            raise InvalidInput(
                f"output_video_encoding.lossy.idr_interval must be between 1 and {MAX_IDR_INTERVAL} frames, got {idr}"
            )
        return VideoEncodingSpec(mode=EncodingMode.LOSSY, bitrate_mbps=bitrate, idr_interval=idr)
    options = {k: _unpack_any(k, v) for k, v in msg.custom_encoding.custom.items()}
    return VideoEncodingSpec(mode=EncodingMode.CUSTOM, custom=validate_custom_encoding(options))


def from_proto(msg: lipsync_pb2.LipsyncConfig | None) -> JobConfig:
    """Check a wire config and fill its defaults.

    Args:
        msg: the client's config, or None when the stream did not start with one.

    Returns:
        The typed job config; every rule a config value must meet has been checked.

    Raises:
        InvalidInput: naming the field and the accepted values.
    """
    if msg is None:
        return JobConfig()
    if msg.input_audio_codec not in _IN_CODECS:
        raise InvalidInput(
            f"input_audio_codec {_codec_name(msg.input_audio_codec)} is not supported: "
            "use AUDIO_CODEC_WAV or AUDIO_CODEC_MP3"
        )
    extend_audio = _EXTEND_AUDIO.get(msg.extend_audio) if msg.HasField("extend_audio") else ExtendAudio.UNSPECIFIED
    if extend_audio is None:
        raise InvalidInput(f"extend_audio {msg.extend_audio} is not a known value: use UNSPECIFIED or SILENCE")
    extend_video = _EXTEND_VIDEO.get(msg.extend_video) if msg.HasField("extend_video") else ExtendVideo.UNSPECIFIED
    if extend_video is None:
        raise InvalidInput(f"extend_video {msg.extend_video} is not a known value: use UNSPECIFIED, FORWARD or REVERSE")
    out_codec = AudioCodec.OPUS
    if msg.HasField("output_audio_codec") and msg.output_audio_codec != audio_pb2.AUDIO_CODEC_UNSPECIFIED:
        chosen = _OUT_CODECS.get(msg.output_audio_codec)
        if chosen is None:
            raise InvalidInput(
                f"output_audio_codec {_codec_name(msg.output_audio_codec)} is not supported: "
                "use AUDIO_CODEC_OPUS or AUDIO_CODEC_MP3"
            )
        out_codec = chosen
    speed = msg.head_movement_speed if msg.HasField("head_movement_speed") else 0
    if speed not in (0, 1):
        raise InvalidInput(f"head_movement_speed must be 0 (static/slow) or 1 (fast), got {speed}")
    background = None
    if msg.HasField("background_audio_config"):
        bg = msg.background_audio_config
        if bg.is_background_audio_provided:
            codec = _IN_CODECS.get(bg.audio_codec) if bg.HasField("audio_codec") else AudioCodec.WAV
            if codec is None:
                raise InvalidInput(
                    f"background_audio_config.audio_codec {_codec_name(bg.audio_codec)} is not supported: "
                    "use AUDIO_CODEC_WAV or AUDIO_CODEC_MP3"
                )
            volume = bg.audio_volume if bg.HasField("audio_volume") else 1.0
            if not 0.0 <= volume <= 1.0:
                raise InvalidInput(f"background_audio_config.audio_volume must be between 0.0 and 1.0, got {volume:g}")
            background = BackgroundAudioSpec(codec=codec, volume=float(volume))
    return JobConfig(
        input_audio_codec=_IN_CODECS[msg.input_audio_codec],
        speaker_info_provided=bool(msg.is_speaker_info_provided),
        extend_audio=extend_audio,
        extend_video=extend_video,
        video_encoding=_video_encoding(msg.output_video_encoding),
        output_audio_codec=out_codec,
        head_movement_speed=speed,
        background=background,
    )


def _pack_any(value: Any) -> Any:
    from google.protobuf import any_pb2

    wrapped: Message
    if isinstance(value, bool):
        wrapped = wrappers_pb2.BoolValue(value=value)
    elif isinstance(value, int):
        wrapped = wrappers_pb2.Int64Value(value=value)
    elif isinstance(value, float):
        wrapped = wrappers_pb2.FloatValue(value=value)
    else:
        wrapped = wrappers_pb2.StringValue(value=str(value))
    packed = any_pb2.Any()
    packed.Pack(wrapped)
    return packed


def to_proto(cfg: JobConfig) -> lipsync_pb2.LipsyncConfig:
    """The config echo: every field set, defaults included.

    Args:
        cfg: a config `from_proto` returned.

    Returns:
        The wire config; a custom encoding carries only the keys the client set.
    """
    enc = video_pb2.VideoEncoding()
    if cfg.video_encoding.mode is EncodingMode.LOSSLESS:
        enc.lossless = True
    elif cfg.video_encoding.mode is EncodingMode.LOSSY:
        enc.lossy.bitrate_mbps = int(cfg.video_encoding.bitrate_mbps)
        enc.lossy.idr_interval = cfg.video_encoding.idr_interval
    else:
        for key, value in cfg.video_encoding.custom.given().items():
            enc.custom_encoding.custom[key].CopyFrom(_pack_any(value))
    msg = lipsync_pb2.LipsyncConfig(
        input_audio_codec=_CODEC_TO_WIRE[cfg.input_audio_codec],
        is_speaker_info_provided=cfg.speaker_info_provided,
        extend_audio={v: k for k, v in _EXTEND_AUDIO.items()}[cfg.extend_audio],
        extend_video={v: k for k, v in _EXTEND_VIDEO.items()}[cfg.extend_video],
        output_video_encoding=enc,
        output_audio_codec=_CODEC_TO_WIRE[cfg.output_audio_codec],
        head_movement_speed=cfg.head_movement_speed,
    )
    bg = msg.background_audio_config
    bg.is_background_audio_provided = cfg.background is not None
    if cfg.background is not None:
        bg.audio_codec = _CODEC_TO_WIRE[cfg.background.codec]
        bg.audio_volume = cfg.background.volume
    return msg
