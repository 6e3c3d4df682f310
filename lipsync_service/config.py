"""Job configuration: the wire `LipsyncConfig` checked, defaults filled, and echoed back."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from google.protobuf import wrappers_pb2

from lipsync_service._proto.nvidia.ai4m.audio.v1 import audio_pb2
from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2
from lipsync_service._proto.nvidia.ai4m.video.v1 import video_pb2
from lipsync_service.errors import InvalidInput

DEFAULT_BITRATE_MBPS = 30
DEFAULT_IDR_INTERVAL = 8
MAX_BITRATE_MBPS = 1000


class AudioCodec(str, Enum):
    WAV = "wav"
    MP3 = "mp3"
    OPUS = "opus"


class ExtendAudio(str, Enum):
    UNSPECIFIED = "unspecified"
    SILENCE = "silence"


class ExtendVideo(str, Enum):
    UNSPECIFIED = "unspecified"
    FORWARD = "forward"
    REVERSE = "reverse"


class EncodingMode(str, Enum):
    LOSSLESS = "lossless"
    LOSSY = "lossy"
    CUSTOM = "custom"


# Documented custom encoding keys: name -> (accepted Python types, description).
CUSTOM_ENCODING_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "preset": ((str,), "x264 preset: ultrafast, superfast, veryfast, faster, fast, medium, slow, slower, veryslow"),
    "tune": ((str,), "x264 tune: film, animation, grain, stillimage, fastdecode, zerolatency"),
    "profile": ((str,), "H.264 profile: baseline, main, high, high444"),
    "crf": ((int, float), "constant rate factor 0-51 (quality mode; replaces the bitrate)"),
    "qp": ((int,), "constant quantizer 0-51 (0 is lossless)"),
    "bitrate_mbps": ((int, float), "average bitrate in Mbps"),
    "max_bitrate_mbps": ((int, float), "VBV maximum bitrate in Mbps"),
    "idr_interval": ((int,), "frames between IDR frames"),
    "bframes": ((int,), "maximum consecutive B-frames (0-16)"),
}
_PRESETS = {"ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo"}
_TUNES = {"film", "animation", "grain", "stillimage", "fastdecode", "zerolatency", "psnr", "ssim"}
_PROFILES = {"baseline", "main", "high", "high444"}


@dataclass(frozen=True)
class VideoEncodingSpec:
    """How the output H.264 is encoded."""

    mode: EncodingMode = EncodingMode.LOSSY
    bitrate_mbps: float = DEFAULT_BITRATE_MBPS
    idr_interval: int = DEFAULT_IDR_INTERVAL
    custom: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BackgroundAudioSpec:
    codec: AudioCodec = AudioCodec.WAV
    volume: float = 1.0


@dataclass(frozen=True)
class JobConfig:
    """Everything a job needs to know from the client's config, defaults filled in."""

    input_audio_codec: AudioCodec = AudioCodec.WAV
    speaker_info_provided: bool = False
    extend_audio: ExtendAudio = ExtendAudio.UNSPECIFIED
    extend_video: ExtendVideo = ExtendVideo.UNSPECIFIED
    video_encoding: VideoEncodingSpec = field(default_factory=VideoEncodingSpec)
    output_audio_codec: AudioCodec = AudioCodec.OPUS
    head_movement_speed: int = 0
    background: BackgroundAudioSpec | None = None


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


def _unpack_any(key: str, value: Any) -> Any:
    for wrapper in (wrappers_pb2.BoolValue, wrappers_pb2.Int32Value, wrappers_pb2.Int64Value,
                    wrappers_pb2.UInt32Value, wrappers_pb2.FloatValue, wrappers_pb2.DoubleValue,
                    wrappers_pb2.StringValue):
        if value.Is(wrapper.DESCRIPTOR):
            msg = wrapper()
            value.Unpack(msg)
            return msg.value
    raise InvalidInput(
        f"output_video_encoding.custom_encoding[{key!r}]: value type {value.type_url!r} is not supported; "
        "use a protobuf wrapper (BoolValue, Int32Value, Int64Value, FloatValue, StringValue)"
    )


def validate_custom_encoding(options: dict[str, Any]) -> dict[str, Any]:
    """Check a custom encoding map against the documented keys.

    Raises:
        InvalidInput: unknown key, wrong type or out-of-range value.
    """
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in CUSTOM_ENCODING_KEYS:
            raise InvalidInput(
                f"output_video_encoding.custom_encoding: unknown key {key!r}; "
                f"supported keys: {', '.join(sorted(CUSTOM_ENCODING_KEYS))}"
            )
        types, _ = CUSTOM_ENCODING_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise InvalidInput(f"output_video_encoding.custom_encoding[{key!r}]: expected {types[0].__name__}, got {value!r}")
        where = f"output_video_encoding.custom_encoding[{key!r}]"
        if key == "preset" and value not in _PRESETS:
            raise InvalidInput(f"{where}: {value!r} is not one of {', '.join(sorted(_PRESETS))}")
        if key == "tune" and value not in _TUNES:
            raise InvalidInput(f"{where}: {value!r} is not one of {', '.join(sorted(_TUNES))}")
        if key == "profile" and value not in _PROFILES:
            raise InvalidInput(f"{where}: {value!r} is not one of {', '.join(sorted(_PROFILES))}")
        if key in ("crf", "qp") and not 0 <= value <= 51:
            raise InvalidInput(f"{where}: must be between 0 and 51, got {value}")
        if key in ("bitrate_mbps", "max_bitrate_mbps") and not 0 < value <= MAX_BITRATE_MBPS:
            raise InvalidInput(f"{where}: must be between 0 (exclusive) and {MAX_BITRATE_MBPS}, got {value}")
        if key == "idr_interval" and not 1 <= value <= 1000:
            raise InvalidInput(f"{where}: must be between 1 and 1000, got {value}")
        if key == "bframes" and not 0 <= value <= 16:
            raise InvalidInput(f"{where}: must be between 0 and 16, got {value}")
        out[key] = value
    if "crf" in out and "qp" in out:
        raise InvalidInput("output_video_encoding.custom_encoding: give either 'crf' or 'qp', not both")
    return out


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
        if not 1 <= idr <= 1000:
            raise InvalidInput(f"output_video_encoding.lossy.idr_interval must be between 1 and 1000 frames, got {idr}")
        return VideoEncodingSpec(mode=EncodingMode.LOSSY, bitrate_mbps=bitrate, idr_interval=idr)
    options = {k: _unpack_any(k, v) for k, v in msg.custom_encoding.custom.items()}
    return VideoEncodingSpec(mode=EncodingMode.CUSTOM, custom=validate_custom_encoding(options))


def from_proto(msg: lipsync_pb2.LipsyncConfig | None) -> JobConfig:
    """Check a wire config and fill its defaults.

    Args:
        msg: the client's config, or None when the stream did not start with one.

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
        out_codec = _OUT_CODECS.get(msg.output_audio_codec)
        if out_codec is None:
            raise InvalidInput(
                f"output_audio_codec {_codec_name(msg.output_audio_codec)} is not supported: "
                "use AUDIO_CODEC_OPUS or AUDIO_CODEC_MP3"
            )
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
    """The config echo: every field set, defaults included."""
    enc = video_pb2.VideoEncoding()
    if cfg.video_encoding.mode is EncodingMode.LOSSLESS:
        enc.lossless = True
    elif cfg.video_encoding.mode is EncodingMode.LOSSY:
        enc.lossy.bitrate_mbps = int(cfg.video_encoding.bitrate_mbps)
        enc.lossy.idr_interval = cfg.video_encoding.idr_interval
    else:
        for key, value in cfg.video_encoding.custom.items():
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
