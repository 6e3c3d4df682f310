"""Hostile Lipsync calls, each built from (seed, index) alone: corrupt media, configs at and past their ranges,
custom encoder values in every wrapper, hostile speaker data, and protocol misuse.

`make_case(corpus, seed, index)` is deterministic, so any case a run reports can be rebuilt and replayed alone
(`python benchmarks/fuzz_server.py --seed S --only INDEX`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from google.protobuf import any_pb2, wrappers_pb2

from lipsync_service._proto.nvidia.ai4m.audio.v1 import audio_pb2
from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2
from lipsync_service.job import CUSTOM_ENCODING_KEYS
from tests.functional.helpers import (
    audio_msg,
    background_msg,
    chunks,
    config,
    requests,
    speaker_msg,
    video_msg,
)
from tests.fuzzing import mutate
from tests.fuzzing.corpus import SIDE, Corpus

Request = lipsync_pb2.LipsyncRequest

# How a client behaves on the wire besides what it sends.
NORMAL = "normal"
PAUSE_READ = "pause_read"  # stops reading the responses for a while, then reads on
NEVER_READ = "never_read"  # sends everything, reads nothing, then goes away
CANCEL_UPLOAD = "cancel_upload"  # goes away in the middle of its upload
CANCEL_DOWNLOAD = "cancel_download"  # goes away after the first output chunk
BEHAVIOURS = (NORMAL, PAUSE_READ, NEVER_READ, CANCEL_UPLOAD, CANCEL_DOWNLOAD)

# Families and their weights in a run: media mutations, then values, then the wire itself.
FAMILIES: tuple[tuple[str, int], ...] = (
    ("mp4", 24), ("wav", 9), ("mp3", 7), ("config", 11), ("custom", 11), ("speakers", 16), ("protocol", 14),
    ("valid", 8),
)

_FLOATS = (math.nan, math.inf, -math.inf, -0.0, 0.0, 1e-45, 0.5, 1.0, 1.0000001, -1.0, 1e30, -1e30, 3.4e38)
_INTS = (0, 1, -1, 2, 7, 8, 51, 52, 1000, 1001, 2**31 - 1, -(2**31), 2**32 - 1, 2**63 - 1, -(2**63), 2**64 - 1)
_STRINGS = ("", "high", "HIGH", "high444", "main", "baseline", "ultrafast", "veryslow", "film", "nan", "1e309",
            "30", "\u00e9\u00e8", "x" * 10000, "\0", "-1")


@dataclass
class Case:
    """One call to make.

    Attributes:
        index: position in the run (with the run's seed, rebuilds the case).
        family: which family built it (FAMILIES).
        detail: what is hostile about it, for the report.
        build: returns the request iterator (called once, on the sending thread; may sleep to pace).
        behaviour: how the client reads and when it leaves (BEHAVIOURS).
        deadline_s: the call's gRPC deadline; the server must answer well within it.
        expect_ok: a valid call: anything but OK is a failure.
        pause_s: PAUSE_READ: how long the client stops reading.
        cancel_after: CANCEL_UPLOAD: messages sent before the client leaves.
    """

    index: int
    family: str
    detail: str
    build: Callable[[], Iterator[Request]]
    behaviour: str = NORMAL
    deadline_s: float = 90.0
    expect_ok: bool = False
    pause_s: float = 0.0
    cancel_after: int = 0
    tags: dict[str, str] = field(default_factory=dict)


#: Cases a campaign once failed on: (seed, index, what went wrong). The CI slice replays them on every run.
REGRESSIONS: tuple[tuple[int, int, str], ...] = (
    (19, 68, "a custom encoding value whose Any names Int32Value over bytes that do not parse: INTERNAL (DecodeError)"),
    (19, 73, "speaker data for 26 frames of a 25-frame clip, in batches of one: INTERNAL (KeyError in core/lips.py)"),
    (19, 85, "40 speakers per frame: 16 KB of trailing metadata, refused by the client (RESOURCE_EXHAUSTED)"),
    (19, 100, "speaker data for one frame, the face's box: INTERNAL (KeyError in core/lips.py reshape)"),
    (19, 1632, "a 10,000-character custom encoding value echoed whole in the INVALID_ARGUMENT message"),
    (19, 5172, "a WAV header claiming 8 channels: the server died (segmentation fault in PyAV's planar to_ndarray)"),
)


def _pick_family(rng: random.Random) -> str:
    names, weights = zip(*FAMILIES)
    return rng.choices(names, weights)[0]


def _codec(rng: random.Random) -> tuple[int, str]:
    return (audio_pb2.AUDIO_CODEC_WAV, "wav") if rng.random() < 0.6 else (audio_pb2.AUDIO_CODEC_MP3, "mp3")


def _audio(corpus: Corpus, kind: str) -> bytes:
    return corpus.wav if kind == "wav" else corpus.mp3


def _fixed(messages: list[Request]) -> Callable[[], Iterator[Request]]:
    return lambda: iter(messages)


def _upload(video: bytes, audio: bytes, cfg: Request | None, *, chunk: int = 64 * 1024,
            background: bytes | None = None) -> Callable[[], Iterator[Request]]:
    return lambda: requests(video, audio, cfg, chunk=chunk, background=background)


# Media ---------------------------------------------------------------------------------------------

def _mp4_case(corpus: Corpus, rng: random.Random, index: int) -> Case:
    layout = rng.choice(list(corpus.videos))
    data = corpus.videos[layout]
    how = rng.choice(("box", "box", "truncate", "flip", "run", "random", "prefixed"))
    if how == "box":
        video, detail = mutate.mp4_box_edit(data, rng)
    elif how == "truncate":
        video, detail = mutate.truncate(data, rng)
    elif how == "flip":
        video, detail = mutate.flip_bits(data, rng)
    elif how == "run":
        video, detail = mutate.random_run(data, rng)
    elif how == "random":
        video, detail = mutate.random_bytes(rng)
    else:
        video, detail = mutate.random_bytes(rng, prefix=data[:rng.choice((8, 24, 32, 64))])
    code, kind = _codec(rng)
    chunk = rng.choice((1500, 4096, 65536))
    return Case(index, "mp4", f"{layout} MP4: {detail} (chunks of {chunk})",
                _upload(video, _audio(corpus, kind), config(input_audio_codec=code), chunk=chunk))


def _wav_case(corpus: Corpus, rng: random.Random, index: int) -> Case:
    how = rng.choice(("header", "header", "header", "truncate", "flip", "run", "random"))
    data = corpus.wav
    if how == "header":
        audio, detail = mutate.wav_header_edit(data, rng)
    elif how == "truncate":
        cut = rng.randrange(0, len(data) + 1)
        audio, detail = data[:cut], f"truncated to {cut} of {len(data)} bytes"
    elif how == "flip":
        audio, detail = mutate.flip_bits(data, rng)
    elif how == "run":
        audio, detail = mutate.random_run(data, rng)
    else:
        audio, detail = mutate.random_bytes(rng, prefix=data[:rng.choice((0, 12, 36, 44))])
    layout = rng.choice(list(corpus.videos))
    return Case(index, "wav", f"WAV: {detail}", _upload(corpus.videos[layout], audio, config()))


def _mp3_case(corpus: Corpus, rng: random.Random, index: int) -> Case:
    how = rng.choice(("header", "header", "truncate", "flip", "run", "random"))
    data = corpus.mp3
    if how == "header":
        audio, detail = mutate.mp3_header_edit(data, rng)
    elif how == "truncate":
        cut = rng.randrange(0, len(data) + 1)
        audio, detail = data[:cut], f"truncated to {cut} of {len(data)} bytes"
    elif how == "flip":
        audio, detail = mutate.flip_bits(data, rng)
    elif how == "run":
        audio, detail = mutate.random_run(data, rng)
    else:
        audio, detail = mutate.random_bytes(rng, prefix=rng.choice((b"", b"ID3", b"\xff\xfb")))
    layout = rng.choice(list(corpus.videos))
    return Case(index, "mp3", f"MP3: {detail}",
                _upload(corpus.videos[layout], audio, config(input_audio_codec=audio_pb2.AUDIO_CODEC_MP3)))


# Config values -------------------------------------------------------------------------------------

def _config_case(corpus: Corpus, rng: random.Random, index: int) -> Case:
    fields: dict[str, object] = {}
    notes = []
    code, kind = _codec(rng)
    fields["input_audio_codec"] = rng.choice((code, code, 0, 3, 4, 99, -1))
    for name, values in (("extend_audio", (0, 1, 2, 7, -5, 2**31 - 1)),
                         ("extend_video", (0, 1, 2, 3, -1, 2**31 - 1)),
                         ("output_audio_codec", (0, 1, 2, 3, 4, -7)),
                         ("head_movement_speed", (0, 1, 2, 255, 2**32 - 1)),
                         ("is_speaker_info_provided", (False, True))):
        if rng.random() < 0.4:
            fields[name] = rng.choice(values)
    cfg = config(**fields)
    enc = cfg.config.output_video_encoding
    which = rng.choice(("none", "lossless", "lossy", "lossy"))
    if which == "lossless":
        enc.lossless = rng.random() < 0.7
    elif which == "lossy":
        for name, values in (("bitrate_mbps", (0, 1, 30, 1000, 1001, 2**32 - 1)),
                             ("idr_interval", (0, 1, 8, 1000, 1001, 2**32 - 1))):
            if rng.random() < 0.7:
                setattr(enc.lossy, name, rng.choice(values))
        if not enc.HasField("lossy"):
            enc.lossy.SetInParent()
    background = None
    if rng.random() < 0.3:
        bg = cfg.config.background_audio_config
        bg.is_background_audio_provided = rng.random() < 0.8
        if rng.random() < 0.7:
            bg.audio_codec = rng.choice((0, 1, 2, 3, 9))
        if rng.random() < 0.7:
            bg.audio_volume = rng.choice(_FLOATS)
        background = _audio(corpus, rng.choice(("wav", "mp3"))) if rng.random() < 0.8 else None
    notes.append(str(cfg.config).replace("\n", " ")[:300])
    layout = rng.choice(list(corpus.videos))
    return Case(index, "config", "config: " + "; ".join(notes),
                _upload(corpus.videos[layout], _audio(corpus, kind), cfg, background=background))


_WRAPPERS: tuple[tuple[str, Callable[[object], object]], ...] = (
    ("BoolValue", lambda v: wrappers_pb2.BoolValue(value=bool(v))),
    ("Int32Value", lambda v: wrappers_pb2.Int32Value(value=int(v))),
    ("Int64Value", lambda v: wrappers_pb2.Int64Value(value=int(v))),
    ("UInt32Value", lambda v: wrappers_pb2.UInt32Value(value=int(v))),
    ("UInt64Value", lambda v: wrappers_pb2.UInt64Value(value=int(v))),
    ("FloatValue", lambda v: wrappers_pb2.FloatValue(value=float(v))),
    ("DoubleValue", lambda v: wrappers_pb2.DoubleValue(value=float(v))),
    ("StringValue", lambda v: wrappers_pb2.StringValue(value=str(v))),
    ("BytesValue", lambda v: wrappers_pb2.BytesValue(value=str(v).encode())),
)


def _custom_value(rng: random.Random) -> tuple[any_pb2.Any, str]:
    packed = any_pb2.Any()
    roll = rng.random()
    if roll < 0.06:
        packed.type_url = rng.choice(("type.googleapis.com/foo.Bar", "", "x", "type.googleapis.com/"
                                      "google.protobuf.Int32Value/extra"))
        packed.value = rng.randbytes(rng.choice((0, 3, 12)))
        return packed, f"Any {packed.type_url!r} with {len(packed.value)} bytes"
    if roll < 0.12:
        # A wrapper's type URL over bytes that do not parse as it.
        name = rng.choice([n for n, _ in _WRAPPERS])
        packed.type_url = f"type.googleapis.com/google.protobuf.{name}"
        packed.value = rng.choice((b"\xff", b"\x08", b"\x0d\x00", rng.randbytes(9)))
        return packed, f"{name} with unparsable bytes {packed.value!r}"
    name, make = rng.choice(_WRAPPERS)
    pool: tuple[object, ...]
    if name in ("FloatValue", "DoubleValue"):
        pool = _FLOATS + (30.0, 5e6, 0.25)
    elif name in ("StringValue", "BytesValue"):
        pool = _STRINGS
    elif name == "BoolValue":
        pool = (True, False)
    else:
        pool = _INTS + (4, 30, 5_000_000)
    value = rng.choice(pool)
    try:
        packed.Pack(make(value))
    except (ValueError, TypeError, OverflowError):
        packed.Pack(wrappers_pb2.StringValue(value=repr(value)))
        name = "StringValue"
    return packed, f"{name}({value!r:.40})"


def _custom_case(corpus: Corpus, rng: random.Random, index: int) -> Case:
    cfg = config()
    custom = cfg.config.output_video_encoding.custom_encoding.custom
    cfg.config.output_video_encoding.custom_encoding.SetInParent()
    keys = list(CUSTOM_ENCODING_KEYS) + ["num-B-Frames", "", "preset ", "\u00fc", "x" * 300]
    notes = []
    for _ in range(rng.choice((0, 1, 1, 2, 3, 5))):
        key = rng.choice(keys)
        value, note = _custom_value(rng)
        custom[key].CopyFrom(value)
        notes.append(f"{key[:20]!r}={note}")
    layout = rng.choice(list(corpus.videos))
    return Case(index, "custom", "custom encoding: " + ", ".join(notes or ["(empty map)"]),
                _upload(corpus.videos[layout], corpus.wav, cfg))


# Speaker data --------------------------------------------------------------------------------------

def _box(corpus: Corpus, rng: random.Random) -> tuple[tuple[float, float, float, float], str]:
    fx, fy, fw, fh = corpus.face_box
    kind = rng.choice(("face", "face", "face", "empty", "faceless", "faceless", "nan", "inf", "negative", "outside",
                       "huge", "tiny", "whole", "edge"))
    boxes = {
        "face": (fx, fy, fw, fh),
        "empty": (0.0, 0.0, 0.0, 0.0),
        # The known INTERNAL of the issue: a box with no readable face in it.
        "faceless": (0.0, SIDE - 40.0, 40.0, 40.0),
        "nan": (math.nan, fy, fw, fh),
        "inf": (fx, fy, math.inf, fh),
        "negative": (fx, -5.0, fw, fh),
        "outside": (SIDE - 10.0, fy, 50.0, fh),
        "huge": (fx, fy, 3e38, 3e38),
        "tiny": (fx, fy, 1e-3, 1e-3),
        "whole": (0.0, 0.0, float(SIDE), float(SIDE)),
        "edge": (float(SIDE), float(SIDE), 0.0, 0.0),
    }
    return boxes[kind], kind


def _frame_ids(corpus: Corpus, rng: random.Random) -> tuple[list[int], str]:
    n = corpus.frames
    kind = rng.choice(("all", "all", "all", "some", "one", "none", "repeated", "descending", "past_end", "huge_id",
                       "many", "shuffled"))
    ids = {
        "all": list(range(n)),
        "some": sorted(rng.sample(range(n), rng.randrange(1, n))),
        "one": [rng.randrange(n)],
        "none": [],
        "repeated": [0, 1, 1, 2],
        "descending": list(range(n - 1, -1, -1)),
        "past_end": list(range(n + rng.choice((1, 10)))),
        "huge_id": [0, 2**32 - 1],
        # Far more frames than the video has, sent before the video says how many it has.
        "many": list(range(rng.choice((1000, 50_000, 300_000)))),
        "shuffled": rng.sample(range(n), n),
    }
    return ids[kind], kind


def _speakers_case(corpus: Corpus, rng: random.Random, index: int) -> Case:
    ids, id_kind = _frame_ids(corpus, rng)
    per_frame = rng.choice((0, 1, 1, 1, 2, 3, 40))
    box_kinds: set[str] = set()
    frames = []
    same = rng.random() < 0.7  # one box for the whole clip, like a tracker's output
    fixed = _box(corpus, rng)
    for fid in ids:
        msg = lipsync_pb2.SpeakerInfoPerFrame(frame_id=fid)
        if rng.random() < 0.05:
            msg.bypass = rng.random() < 0.5
        for k in range(per_frame if len(ids) <= 1000 else min(per_frame, 1)):
            (x, y, w, h), kind = fixed if same else _box(corpus, rng)
            box_kinds.add(kind)
            info = msg.speaker_infos.add()
            info.speaker_bbox.x, info.speaker_bbox.y, info.speaker_bbox.width, info.speaker_bbox.height = x, y, w, h
            if rng.random() < 0.9:
                info.speaker_id = rng.choice((1, k, -1, 2**31 - 1, 7))
            if rng.random() < 0.9:
                info.is_speaking = rng.random() < 0.8
        frames.append(msg)
    flag = rng.random() < 0.92
    placement = rng.choice(("before", "before", "interleaved", "after", "split"))
    code, kind = _codec(rng)
    layout = rng.choice(list(corpus.videos))
    video, audio = corpus.videos[layout], _audio(corpus, kind)
    cfg = config(input_audio_codec=code, is_speaker_info_provided=flag)
    batch = rng.choice((1, 10, 100_000))
    if len(ids) > 5000:
        # 300,000 messages of one frame each take the client itself longer than a call's deadline to send
        # (about 0.5 ms a message here): a flood of messages is the tiny_chunks case's, not this one's.
        batch = max(batch, 1000)

    def build() -> Iterator[Request]:
        batches = [speaker_msg(frames[i:i + batch]) for i in range(0, len(frames), batch)] or [speaker_msg([])]
        media = list(requests(video, audio, chunk=16384))
        yield cfg
        if placement == "before":
            yield from batches
            yield from media
        elif placement == "after":
            yield from media
            yield from batches
        else:
            # Interleaved (one batch per media message) or split across the stream.
            step = 1 if placement == "interleaved" else max(1, len(media) // max(1, len(batches)))
            pending = list(batches)
            for i, m in enumerate(media):
                if pending and i % step == 0:
                    yield pending.pop(0)
                yield m
            yield from pending

    detail = (f"speaker data: {len(ids)} frame ids ({id_kind}), {per_frame} per frame, boxes "
              f"{'/'.join(sorted(box_kinds)) or 'none'}, {placement}, batches of {batch}, flag {flag}, {layout}")
    return Case(index, "speakers", detail, build, tags={"boxes": "/".join(sorted(box_kinds))})


# Protocol misuse -----------------------------------------------------------------------------------

PROTOCOL_KINDS = ("no_config", "two_configs", "data_before_config", "empty_messages", "config_only", "nothing",
                  "video_only", "audio_only", "audio_first", "tiny_chunks", "byte_a_second", "oversized",
                  "background_unannounced", "speakers_unannounced", "pause_read", "never_read", "cancel_upload",
                  "cancel_download", "empty_bytes")


def _protocol_case(corpus: Corpus, rng: random.Random, index: int, kind: str | None = None) -> Case:
    layout = rng.choice(list(corpus.videos))
    video, audio = corpus.videos[layout], corpus.wav
    kind = kind or rng.choice(PROTOCOL_KINDS)
    behaviour, pause, cancel_after, deadline = NORMAL, 0.0, 0, 90.0
    build: Callable[[], Iterator[Request]]
    if kind == "no_config":
        build = _upload(video, audio, None)
    elif kind == "two_configs":
        build = _fixed([config(), config(), *requests(video, audio)])
    elif kind == "data_before_config":
        build = _fixed([video_msg(video[:1000]), config(), *requests(video[1000:], audio)])
    elif kind == "empty_messages":
        empties = [Request(), Request(input=lipsync_pb2.LipsyncInputData())]

        def build() -> Iterator[Request]:
            yield config()
            for m in requests(video, audio, chunk=32768):
                yield rng.choice(empties)
                yield m
    elif kind == "empty_bytes":
        build = _fixed([config(), video_msg(b""), audio_msg(b""), *requests(video, audio)])
    elif kind == "config_only":
        build = _fixed([config()])
    elif kind == "nothing":
        build = _fixed([])
    elif kind == "video_only":
        build = _upload(video, b"", config())
    elif kind == "audio_only":
        build = _fixed([config(), *[audio_msg(c) for c in chunks(audio)]])
    elif kind == "audio_first":
        build = _fixed([config(), *[audio_msg(c) for c in chunks(audio, 4096)],
                        *[video_msg(c) for c in chunks(video, 4096)]])
    elif kind == "tiny_chunks":
        build = _upload(video, audio, config(), chunk=rng.choice((64, 512)))
    elif kind == "byte_a_second":
        seconds = rng.choice((3, 5, 8))

        def build() -> Iterator[Request]:
            import time

            yield config()
            for i in range(seconds):
                yield video_msg(video[i:i + 1])
                time.sleep(1.0)
            yield from requests(video[seconds:], audio)
    elif kind == "oversized":
        build = _fixed([config(), video_msg(video + b"\0" * (17 * 2**20)), audio_msg(audio)])
    elif kind == "background_unannounced":
        build = _fixed([config(), *requests(video, audio), background_msg(audio)])
    elif kind == "speakers_unannounced":
        build = _fixed([config(), speaker_msg([lipsync_pb2.SpeakerInfoPerFrame(frame_id=0)]), *requests(video, audio)])
    else:
        build = _upload(video, audio, config(), chunk=16384)
        behaviour = kind
        if kind == "pause_read":
            pause = rng.choice((1.0, 2.5, 4.0))
        elif kind == "cancel_upload":
            cancel_after = rng.randrange(1, 8)
        elif kind == "never_read":
            deadline = 10.0
    return Case(index, "protocol", f"protocol: {kind} ({layout})", build, behaviour=behaviour, pause_s=pause,
                cancel_after=cancel_after, deadline_s=deadline,
                expect_ok=kind in ("no_config", "empty_messages", "empty_bytes", "audio_first", "tiny_chunks",
                                   "byte_a_second", "pause_read"))


def _valid_case(corpus: Corpus, rng: random.Random, index: int) -> Case:
    layout = rng.choice(list(corpus.videos))
    code, kind = _codec(rng)
    fields: dict[str, object] = {"input_audio_codec": code}
    if rng.random() < 0.3:
        fields["extend_audio"] = lipsync_pb2.EXTEND_AUDIO_SILENCE
    if rng.random() < 0.3:
        fields["output_audio_codec"] = rng.choice((audio_pb2.AUDIO_CODEC_OPUS, audio_pb2.AUDIO_CODEC_MP3))
    if rng.random() < 0.3:
        fields["head_movement_speed"] = 1
    cfg = config(**fields)
    if rng.random() < 0.2:
        cfg.config.output_video_encoding.lossless = True
    speakers = rng.random() < 0.3
    if speakers:
        cfg.config.is_speaker_info_provided = True
        x, y, w, h = corpus.face_box
        frames = []
        for fid in range(corpus.frames):
            msg = lipsync_pb2.SpeakerInfoPerFrame(frame_id=fid)
            info = msg.speaker_infos.add()
            info.speaker_bbox.x, info.speaker_bbox.y, info.speaker_bbox.width, info.speaker_bbox.height = x, y, w, h
            info.speaker_id, info.is_speaking = 1, True
            frames.append(msg)
        build = _fixed([cfg, speaker_msg(frames), *requests(corpus.videos[layout], _audio(corpus, kind))])
    else:
        build = _upload(corpus.videos[layout], _audio(corpus, kind), cfg)
    return Case(index, "valid", f"valid: {layout}, {kind}, speakers {speakers}, {str(cfg.config)!r:.200}", build,
                expect_ok=True)


_BUILDERS = {"mp4": _mp4_case, "wav": _wav_case, "mp3": _mp3_case, "config": _config_case, "custom": _custom_case,
             "speakers": _speakers_case, "protocol": _protocol_case, "valid": _valid_case}


def make_case(corpus: Corpus, seed: int, index: int) -> Case:
    """The `index`-th case of the run seeded with `seed` (the same case every time)."""
    rng = random.Random(f"lipsync-fuzz:{seed}:{index}")
    return _BUILDERS[_pick_family(rng)](corpus, rng, index)


def warm_up_case(corpus: Corpus, index: int) -> Case:
    """A valid call (the warm-up before a run's baseline is taken)."""
    return _valid_case(corpus, random.Random(f"lipsync-warm-up:{index}"), index)


_INVALID_FAMILIES = ("mp4", "wav", "mp3", "config", "custom", "speakers")
# The soak's mix: what a service behind a load balancer sees all day. Kind -> (weight, how it is built).
SOAK_MIX: dict[str, tuple[int, Callable[[Corpus, random.Random, int], Case]]] = {
    "valid": (45, _valid_case),
    "invalid": (20, lambda c, r, i: _BUILDERS[r.choice(_INVALID_FAMILIES)](c, r, i)),
    "cancelled": (10, lambda c, r, i: _protocol_case(c, r, i, r.choice(("cancel_upload", "cancel_download",
                                                                        "never_read")))),
    "slow_reader": (12, lambda c, r, i: _protocol_case(c, r, i, "pause_read")),
    "slow_writer": (13, lambda c, r, i: _protocol_case(c, r, i, "byte_a_second")),
}


def soak_case(corpus: Corpus, seed: int, index: int) -> tuple[str, Case]:
    """The `index`-th call of a soak: its kind (SOAK_MIX) and the case."""
    rng = random.Random(f"lipsync-soak:{seed}:{index}")
    names = list(SOAK_MIX)
    kind = rng.choices(names, [SOAK_MIX[n][0] for n in names])[0]
    return kind, SOAK_MIX[kind][1](corpus, rng, index)
