"""The typed job description: a client's config as checked values with defaults filled (no wire types)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum, IntEnum
from typing import Any


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


DEFAULT_BITRATE_MBPS = 30
DEFAULT_IDR_INTERVAL = 8
MAX_BITRATE_MBPS = 1000
MAX_IDR_INTERVAL = 1000
MAX_QUANTIZER = 51  # x264's top qp and crf for 8-bit video
MAX_BFRAMES = 16  # x264's limit

# x264's own names (presets in its speed order), as accepted in a custom encoding.
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")
TUNES = ("film", "animation", "grain", "stillimage", "fastdecode", "zerolatency", "psnr", "ssim")
PROFILES = ("baseline", "main", "high", "high444")
#: The only accepted profile that allows lossless coding: x264 refuses the others when qp is 0 or crf below 1.
LOSSLESS_PROFILE = "high444"

# NVIDIA's client sends the properties of NVIDIA's hardware encoder plugin (Gst-nvvideo4linux2, nvv4l2h264enc).
# Their values are that plugin's: its enums carry the Linux V4L2 control values
# (V4L2_MPEG_VIDEO_H264_PROFILE_*, V4L2_MPEG_VIDEO_BITRATE_MODE_*), its defaults are those of gstv4l2videoenc.c.
#: The plugin's `profile` enum values (V4L2_MPEG_VIDEO_H264_PROFILE_*) -> the x264 profile.
NV_PROFILES = {0: "baseline", 2: "main", 4: "high", 7: "high444"}
#: Bitrate (bit/s) the plugin uses when `bitrate` is not given (GST_V4L2_VIDEO_ENC_BITRATE_DEFAULT).
NV_DEFAULT_BITRATE = 4_000_000
#: Peak = this x bitrate in VBR when `maxbitrate` is not given (the plugin's documented peak-bitrate default).
NV_VBR_PEAK_FACTOR = 1.2
MAX_BITRATE_BPS = MAX_BITRATE_MBPS * 1_000_000
MIN_BITRATE_BPS = 1000  # x264 counts kbit/s: less than that is no rate at all


class ControlRate(IntEnum):
    """The plugin's `control-rate` (V4L2_MPEG_VIDEO_BITRATE_MODE_*; CONSTANT_QP exists on dGPU only)."""

    VBR = 0
    CBR = 1
    CONSTANT_QP = 2


@dataclass(frozen=True)
class EncodingKey:
    """What one custom encoding key accepts: the source of its validation, its help text and its docs row.

    Attributes:
        types: accepted Python types (a bool is never a number; an integral float counts as an int where
            int is accepted and float is not).
        what: what the key sets, for help texts.
        choices: the accepted values, when the key takes a name or an enum number (names match in any case).
        low, high: the accepted range, when the key takes a number.
        low_exclusive: `low` itself is refused (a rate of 0 means nothing).
        wire: the key's name on the wire when it is not the field name (NVIDIA's hyphenated properties).
        ignored: why the key is accepted but has no effect on x264; empty when it is mapped.
    """

    types: tuple[type, ...]
    what: str
    choices: tuple[str | int, ...] = ()
    low: int | None = None
    high: int | None = None
    low_exclusive: bool = False
    wire: str = ""
    ignored: str = ""

    @property
    def type_name(self) -> str:
        """The accepted type as error messages word it: str, int, number or "str or int"."""
        if self.types == (int, float):
            return "number"
        return " or ".join(t.__name__ for t in self.types)

    @property
    def range_text(self) -> str:
        """The accepted range as error messages and help texts word it, e.g. "between 0 and 51"."""
        exclusive = " (exclusive)" if self.low_exclusive else ""
        return f"between {self.low}{exclusive} and {self.high}"

    @property
    def description(self) -> str:
        """One line for help texts: what the key sets and the values it accepts."""
        accepted = f"one of {', '.join(str(c) for c in self.choices)}" if self.choices else self.range_text
        return f"{self.what}, {accepted}" + (" (accepted, no effect with x264)" if self.ignored else "")


def _key(key: EncodingKey) -> Any:
    # Each CustomEncoding field carries its EncodingKey, so the key names, their rules and the typed
    # fields cannot drift apart.
    return field(default=None, metadata={"key": key})


_NUMBER = (int, float)


@dataclass(frozen=True)
class CustomEncoding:
    """The custom x264 settings a client chose; None means not given (x264's or our default applies).

    Two key sets share it: ours (x264's vocabulary) and NVIDIA's hardware encoder properties, which NVIDIA's
    client sends. Numbers keep the type the client sent (int or float; an integral float given for an int
    key is stored as that int), so the config echo returns them as sent.
    """

    preset: str | None = _key(EncodingKey((str,), "x264 preset", choices=PRESETS))
    tune: str | None = _key(EncodingKey((str,), "x264 tune", choices=TUNES))
    profile: str | int | None = _key(EncodingKey(
        (str, int), "H.264 profile: x264's name, or the NVIDIA plugin's number (0 Baseline, 2 Main, 4 High, "
                    f"7 High444); lossless coding (qp 0 or crf below 1) needs {LOSSLESS_PROFILE} or none",
        choices=(*PROFILES, *NV_PROFILES)))
    crf: float | None = _key(EncodingKey(_NUMBER, "constant rate factor (quality mode, replaces the bitrate)",
                                         low=0, high=MAX_QUANTIZER))
    qp: int | None = _key(EncodingKey((int,), "constant quantizer (0 is lossless)", low=0, high=MAX_QUANTIZER))
    bitrate_mbps: float | None = _key(EncodingKey(_NUMBER, "average bitrate in Mbps", low=0, high=MAX_BITRATE_MBPS,
                                                  low_exclusive=True))
    max_bitrate_mbps: float | None = _key(EncodingKey(_NUMBER, "VBV maximum bitrate in Mbps", low=0,
                                                      high=MAX_BITRATE_MBPS, low_exclusive=True))
    idr_interval: int | None = _key(EncodingKey((int,), f"frames between IDR frames (default {DEFAULT_IDR_INTERVAL})",
                                                low=1, high=MAX_IDR_INTERVAL))
    bframes: int | None = _key(EncodingKey((int,), "maximum consecutive B-frames", low=0, high=MAX_BFRAMES))
    # NVIDIA's encoder properties.
    bitrate: int | None = _key(EncodingKey((int,), "NVIDIA: target bitrate in bit/s", low=MIN_BITRATE_BPS,
                                           high=MAX_BITRATE_BPS))
    maxbitrate: int | None = _key(EncodingKey((int,), "NVIDIA: peak bitrate in bit/s (VBR)", low=MIN_BITRATE_BPS,
                                              high=MAX_BITRATE_BPS))
    idrinterval: int | None = _key(EncodingKey((int,), "NVIDIA: frames between IDR frames", low=1,
                                               high=MAX_IDR_INTERVAL))
    iframeinterval: int | None = _key(EncodingKey((int,), "NVIDIA: frames between I-frames (every I-frame "
                                                          "is an IDR frame here)", low=1, high=MAX_IDR_INTERVAL))
    control_rate: int | None = _key(EncodingKey(
        (int,), "NVIDIA: rate control, 0 VBR, 1 CBR (the plugin's default), 2 constant QP (needs qp)",
        choices=tuple(int(c) for c in ControlRate), wire="control-rate"))
    preset_id: int | None = _key(EncodingKey(
        (int,), "NVIDIA: NVENC preset P1-P7", low=1, high=7, wire="preset-id",
        ignored="selects NVENC's own speed/quality algorithms; x264's speed is set by 'preset' (mapping P1-P7 "
                "onto x264 presets would make a GPU speed hint slow the CPU encoder down up to tenfold)"))
    tuning_info_id: int | None = _key(EncodingKey(
        (int,), "NVIDIA: NVENC tuning (1 high quality, 2 low latency, 3 ultra-low latency, 4 lossless)",
        low=1, high=4, wire="tuning-info-id",
        ignored="tunes NVENC's internals (quality against latency); NVIDIA's own example pairs 4 (lossless) "
                "with a 5 Mbit/s bitrate, so it is not taken to mean lossless output ('qp': 0 gives that)"))

    def given(self) -> dict[str, Any]:
        """The keys the client set, by their wire names, with their values, in declaration order.

        Returns:
            wire key -> value for every field that is not None.
        """
        return {_WIRE[f.name]: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def ignored_hints(self) -> dict[str, Any]:
        """The given keys that are accepted but mean nothing to x264 (logged once per call).

        Returns:
            wire key -> value.
        """
        return {key: value for key, value in self.given().items() if CUSTOM_ENCODING_KEYS[key].ignored}

    @property
    def x264_profile(self) -> str | None:
        """The x264 profile name for `profile` (a name in any case, or the plugin's number), None when unset."""
        if self.profile is None:
            return None
        if isinstance(self.profile, str):
            return self.profile.lower()
        return NV_PROFILES[self.profile]


#: Field name -> wire key name.
_WIRE: dict[str, str] = {f.name: f.metadata["key"].wire or f.name for f in fields(CustomEncoding)}
#: The documented custom encoding keys by wire name, in declaration order: name -> what it accepts.
CUSTOM_ENCODING_KEYS: dict[str, EncodingKey] = {_WIRE[f.name]: f.metadata["key"] for f in fields(CustomEncoding)}
#: Wire key name -> CustomEncoding field name.
CUSTOM_ENCODING_FIELDS: dict[str, str] = {wire: name for name, wire in _WIRE.items()}


@dataclass(frozen=True)
class VideoEncodingSpec:
    """How the output H.264 is encoded."""

    mode: EncodingMode = EncodingMode.LOSSY
    bitrate_mbps: float = DEFAULT_BITRATE_MBPS
    idr_interval: int = DEFAULT_IDR_INTERVAL
    custom: CustomEncoding = field(default_factory=CustomEncoding)


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
