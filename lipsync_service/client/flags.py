"""Job flags shared by `lipsync-client` and `lipsync-service run`: argparse definitions -> wire LipsyncConfig.

The flag names mirror the reference LipSync client (docs/protocol.md#client-cli). Values are passed through
as given (e.g. --bitrate 0): the server's config validation is the one place that judges them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2, wrappers_pb2

from lipsync_service._proto.nvidia.ai4m.audio.v1 import audio_pb2
from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2
from lipsync_service._proto.nvidia.ai4m.video.v1 import video_pb2
from lipsync_service.errors import InvalidInput
from lipsync_service.job import CUSTOM_ENCODING_KEYS

_EXTEND_AUDIO = {"unspecified": lipsync_pb2.EXTEND_AUDIO_UNSPECIFIED, "silence": lipsync_pb2.EXTEND_AUDIO_SILENCE}
_EXTEND_VIDEO = {"unspecified": lipsync_pb2.EXTEND_VIDEO_UNSPECIFIED, "forward": lipsync_pb2.EXTEND_VIDEO_FORWARD,
                 "reverse": lipsync_pb2.EXTEND_VIDEO_REVERSE}
_OUT_AUDIO = {"opus": audio_pb2.AUDIO_CODEC_OPUS, "mp3": audio_pb2.AUDIO_CODEC_MP3}
_INT32 = range(-(2**31), 2**31)
# Built from the accepted sets and ranges themselves, so the help cannot drift from what the server accepts.
_CUSTOM_ENCODING_HELP = ("custom encoder options as a JSON object (or a path to a JSON file), "
                         'e.g. \'{"preset": "fast", "crf": 18}\', or NVIDIA\'s encoder properties as its client '
                         'sends them, e.g. \'{"bitrate": 5000000, "idrinterval": 30}\'; keys: '
                         + "; ".join(f"{name}: {key.description}" for name, key in CUSTOM_ENCODING_KEYS.items()))


def _lower(value: str) -> str:
    return value.lower()


def add_job_flags(parser: argparse.ArgumentParser) -> None:
    """Add the flags that shape a job's config (everything except the input/output file flags and TLS).

    Args:
        parser: the parser (or argument group's parser) to extend.
    """
    g = parser.add_argument_group("job options")
    g.add_argument("--speaker-data-input", type=Path, default=None, metavar="JSON",
                   help='per-frame speaker data: {"frames": [{"speakers": [{"bbox": [x, y, w, h], '
                        '"speaker_id": 1, "is_speaking": true}], "bypass": false}, ...]}')
    g.add_argument("--extend-audio", type=_lower, choices=sorted(_EXTEND_AUDIO), default=None,
                   help="video longer than audio: 'silence' pads the speech to the video's length")
    g.add_argument("--extend-video", type=_lower, choices=sorted(_EXTEND_VIDEO), default=None,
                   help="audio longer than video: repeat the last 5 s 'forward' or ping-pong in 'reverse'")
    g.add_argument("--bitrate", type=int, default=None, metavar="MBPS", help="output bitrate in Mbps (lossy)")
    g.add_argument("--idr-interval", type=int, default=None, metavar="FRAMES",
                   help="frames between IDR frames (lossy)")
    g.add_argument("--lossless", action="store_true", help="mathematically lossless H.264 output")
    g.add_argument("--custom-encoding-params", default=None, metavar="JSON", help=_CUSTOM_ENCODING_HELP)
    g.add_argument("--output-audio-codec", type=_lower, choices=sorted(_OUT_AUDIO), default=None,
                   help="audio codec of the output MP4 (default opus)")
    g.add_argument("--head-movement-speed", type=int, choices=(0, 1), default=None,
                   help="0: static/slow head (strong smoothing), 1: fast motion")
    g.add_argument("--mix-background-audio", action="store_true",
                   help="mix --background-audio-input under the speech")
    g.add_argument("--background-audio-input", type=Path, default=None, metavar="FILE",
                   help="background audio (WAV or MP3) mixed under the speech")
    g.add_argument("--background-audio-volume", type=float, default=None, metavar="0..1",
                   help="background volume, 0.0-1.0 (default 1.0)")


def audio_codec_of(path: Path) -> audio_pb2.AudioCodec:
    """The wire AudioCodec of an audio file, from its first bytes (else its extension).

    Raises:
        InvalidInput: the file cannot be read or is neither WAV nor MP3.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as exc:
        raise InvalidInput(f"audio file {path}: {exc.strerror or exc}") from exc
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return audio_pb2.AUDIO_CODEC_WAV
    # ID3 tag, or an MPEG audio frame sync (11 set bits).
    if head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return audio_pb2.AUDIO_CODEC_MP3
    by_ext = {".wav": audio_pb2.AUDIO_CODEC_WAV, ".mp3": audio_pb2.AUDIO_CODEC_MP3}.get(Path(path).suffix.lower())
    if by_ext is None:
        raise InvalidInput(f"audio file {path}: not a WAV or MP3 file")
    return by_ext


def _wrap(key: str, value: Any) -> any_pb2.Any:
    if isinstance(value, bool):
        msg: Any = wrappers_pb2.BoolValue(value=value)
    elif isinstance(value, int):
        msg = wrappers_pb2.Int32Value(value=value) if value in _INT32 else wrappers_pb2.Int64Value(value=value)
    elif isinstance(value, float):
        msg = wrappers_pb2.FloatValue(value=value)
    elif isinstance(value, str):
        msg = wrappers_pb2.StringValue(value=value)
    else:
        raise InvalidInput(f"--custom-encoding-params: {key!r} must be a bool, number or string, got {value!r}")
    packed = any_pb2.Any()
    packed.Pack(msg)
    return packed


def parse_custom_params(text: str) -> dict[str, Any]:
    """The --custom-encoding-params value: inline JSON object, or a path to a file holding one.

    Raises:
        InvalidInput: not valid JSON, or not an object.
    """
    source = text
    if not text.lstrip().startswith("{"):
        try:
            source = Path(text).read_text()
        except OSError as exc:
            raise InvalidInput(f"--custom-encoding-params: neither a JSON object nor a readable file: {text}") from exc
    try:
        doc = json.loads(source)
    except ValueError as exc:
        raise InvalidInput(f"--custom-encoding-params: invalid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidInput("--custom-encoding-params: expected a JSON object of option -> value")
    return doc


def job_config_from_args(args: argparse.Namespace, *, audio_path: Path | None = None) -> lipsync_pb2.LipsyncConfig:
    """Build the wire config from parsed job flags.

    Args:
        args: parsed arguments of a parser extended by `add_job_flags`.
        audio_path: the speech file (its codec sets input_audio_codec); defaults to args.audio_input or
            args.audio, whichever the parser defines.

    Returns:
        The LipsyncConfig to send first (only fields the user set, besides input_audio_codec).

    Raises:
        InvalidInput: contradictory flags, or an unreadable/unknown audio or JSON input.
    """
    audio = audio_path or getattr(args, "audio_input", None) or getattr(args, "audio", None)
    cfg = lipsync_pb2.LipsyncConfig(
        input_audio_codec=audio_codec_of(Path(audio)) if audio else audio_pb2.AUDIO_CODEC_WAV)
    if args.speaker_data_input is not None:
        cfg.is_speaker_info_provided = True
    if args.extend_audio is not None:
        cfg.extend_audio = _EXTEND_AUDIO[args.extend_audio]
    if args.extend_video is not None:
        cfg.extend_video = _EXTEND_VIDEO[args.extend_video]
    if args.output_audio_codec is not None:
        cfg.output_audio_codec = _OUT_AUDIO[args.output_audio_codec]
    if args.head_movement_speed is not None:
        cfg.head_movement_speed = args.head_movement_speed

    lossy = args.bitrate is not None or args.idr_interval is not None
    chosen = [name for name, on in (("--lossless", args.lossless), ("--bitrate/--idr-interval", lossy),
                                    ("--custom-encoding-params", args.custom_encoding_params is not None)) if on]
    if len(chosen) > 1:
        raise InvalidInput(f"choose one output encoding: {' and '.join(chosen)} cannot be combined")
    if args.lossless:
        cfg.output_video_encoding.CopyFrom(video_pb2.VideoEncoding(lossless=True))
    elif lossy:
        enc = video_pb2.LossyEncoding()
        if args.bitrate is not None:
            enc.bitrate_mbps = max(0, args.bitrate)
        if args.idr_interval is not None:
            enc.idr_interval = max(0, args.idr_interval)
        cfg.output_video_encoding.lossy.CopyFrom(enc)
    elif args.custom_encoding_params is not None:
        custom = cfg.output_video_encoding.custom_encoding
        custom.SetInParent()
        for key, value in parse_custom_params(args.custom_encoding_params).items():
            custom.custom[key].CopyFrom(_wrap(key, value))

    if args.mix_background_audio and args.background_audio_input is None:
        raise InvalidInput("--mix-background-audio needs --background-audio-input FILE")
    if args.background_audio_input is not None:
        bg = cfg.background_audio_config
        bg.is_background_audio_provided = True
        bg.audio_codec = audio_codec_of(args.background_audio_input)
        if args.background_audio_volume is not None:
            bg.audio_volume = args.background_audio_volume
    elif args.background_audio_volume is not None:
        raise InvalidInput("--background-audio-volume needs --background-audio-input FILE")
    return cfg
