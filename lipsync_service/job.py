"""The typed job description: a client's config as checked values with defaults filled (no wire types)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
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


@dataclass(frozen=True)
class EncodingKey:
    """What one custom encoding key accepts: the source of both its validation and its help text.

    Attributes:
        types: accepted Python types (a bool is never a number); the first names the type in errors.
        what: what the key sets, for help texts.
        choices: the accepted strings, when the key takes a name.
        low, high: the accepted range, when the key takes a number.
        low_exclusive: `low` itself is refused (a rate of 0 means nothing).
    """

    types: tuple[type, ...]
    what: str
    choices: tuple[str, ...] = ()
    low: int | None = None
    high: int | None = None
    low_exclusive: bool = False

    @property
    def range_text(self) -> str:
        """The accepted range as error messages and help texts word it, e.g. "between 0 and 51"."""
        exclusive = " (exclusive)" if self.low_exclusive else ""
        return f"between {self.low}{exclusive} and {self.high}"

    @property
    def description(self) -> str:
        """One line for help texts: what the key sets and the values it accepts."""
        accepted = f"one of {', '.join(self.choices)}" if self.choices else self.range_text
        return f"{self.what}, {accepted}"


def _key(key: EncodingKey) -> Any:
    # Each CustomEncoding field carries its EncodingKey, so the key names, their rules and the typed
    # fields cannot drift apart.
    return field(default=None, metadata={"key": key})


_NUMBER = (int, float)


@dataclass(frozen=True)
class CustomEncoding:
    """The custom x264 settings a client chose; None means not given (x264's or our default applies).

    Numbers keep the type the client sent (int or float), so the config echo returns them as sent.
    """

    preset: str | None = _key(EncodingKey((str,), "x264 preset", choices=PRESETS))
    tune: str | None = _key(EncodingKey((str,), "x264 tune", choices=TUNES))
    profile: str | None = _key(EncodingKey((str,), "H.264 profile (lossless coding, qp 0 or crf below 1, "
                                                   f"needs {LOSSLESS_PROFILE} or none)", choices=PROFILES))
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

    def given(self) -> dict[str, Any]:
        """The keys the client set, with their values, in declaration order.

        Returns:
            key -> value for every field that is not None.
        """
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


#: The documented custom encoding keys, in declaration order: name -> what it accepts.
CUSTOM_ENCODING_KEYS: dict[str, EncodingKey] = {f.name: f.metadata["key"] for f in fields(CustomEncoding)}


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
