"""Byte-level mutations of valid media: MP4 box sizes and counts, WAV and MP3 headers, truncation, bit flips,
random runs. Every function is pure: the same random state gives the same bytes."""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

# Boxes whose payload is a list of boxes (walked into), and full boxes that start with an entry count.
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"mvex", b"moof", b"traf", b"udta"}
_COUNTED = {b"stts", b"stsc", b"stsz", b"stco", b"co64", b"ctts", b"stss", b"elst", b"dref", b"stsd", b"trun"}
# Values that break parsers: zero, one, the smallest and largest of each width, and their neighbours.
EDGE_U32 = (0, 1, 2, 7, 8, 9, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE,
            0xFFFFFFFF)
EDGE_U16 = (0, 1, 2, 7, 8, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF)


@dataclass(frozen=True)
class Box:
    """One ISO BMFF box: where it starts, its declared size, header length and type."""

    offset: int
    size: int
    header: int
    kind: bytes


def boxes(data: bytes, start: int = 0, end: int | None = None, depth: int = 0) -> list[Box]:
    """Every box of an MP4 reachable by walking container boxes, in file order (stops at the first bad size)."""
    end = len(data) if end is None else end
    out: list[Box] = []
    pos = start
    while pos + 8 <= end and depth < 8:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1 and pos + 16 <= end:
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            break
        out.append(Box(pos, size, header, kind))
        if kind in _CONTAINERS:
            out.extend(boxes(data, pos + header, pos + size, depth + 1))
        pos += size
    return out


def _put_u32(buf: bytearray, pos: int, value: int) -> None:
    if 0 <= pos <= len(buf) - 4:
        struct.pack_into(">I", buf, pos, value & 0xFFFFFFFF)


def mp4_box_edit(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Change one box's size, type or entry count (what a parser trusts most)."""
    found = boxes(data)
    if not found:
        return flip_bits(data, rng, 8)
    box = rng.choice(found)
    buf = bytearray(data)
    what = rng.choice(("size", "size", "type", "count") if box.kind in _COUNTED else ("size", "size", "type"))
    if what == "size":
        value = rng.choice((*EDGE_U32, box.size - 1, box.size + 1, box.size * 2, rng.getrandbits(32)))
        _put_u32(buf, box.offset, value)
        return bytes(buf), f"box {box.kind.decode('latin-1')}@{box.offset} size {box.size} -> {value}"
    if what == "type":
        kind = rng.choice((b"moov", b"mdat", b"free", b"ftyp", b"trak", b"\0\0\0\0", bytes(rng.getrandbits(8)
                                                                                        for _ in range(4))))
        buf[box.offset + 4:box.offset + 8] = kind
        return bytes(buf), f"box {box.kind.decode('latin-1')}@{box.offset} type -> {kind!r}"
    value = rng.choice((*EDGE_U32, rng.getrandbits(32)))
    # Full box: version and flags (4 bytes) after the header, then the entry count (stsz: sample size first).
    at = box.offset + box.header + (8 if box.kind == b"stsz" else 4)
    _put_u32(buf, at, value)
    return bytes(buf), f"box {box.kind.decode('latin-1')}@{box.offset} entry count -> {value}"


def truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Cut the data at a random point, or just before or after a box boundary."""
    found = boxes(data)
    if found and rng.random() < 0.5:
        box = rng.choice(found)
        cut = max(0, min(len(data), box.offset + rng.choice((0, 1, 4, 8, box.header, box.size - 1, box.size))))
    else:
        cut = rng.randrange(0, len(data) + 1)
    return data[:cut], f"truncated to {cut} of {len(data)} bytes"


def flip_bits(data: bytes, rng: random.Random, count: int | None = None) -> tuple[bytes, str]:
    """Flip 1-64 bits; half the time within the first 4 KiB (the headers), else anywhere."""
    if not data:
        return data, "no bits to flip"
    count = count or rng.choice((1, 2, 4, 8, 16, 64))
    limit = min(len(data), 4096) if rng.random() < 0.5 else len(data)
    buf = bytearray(data)
    for _ in range(count):
        pos = rng.randrange(limit)
        buf[pos] ^= 1 << rng.randrange(8)
    return bytes(buf), f"{count} bits flipped in the first {limit} bytes"


def random_run(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Overwrite, insert or delete a run of random bytes."""
    pos = rng.randrange(0, len(data) + 1)
    length = rng.choice((1, 4, 16, 256, 4096))
    junk = rng.randbytes(length)
    how = rng.choice(("overwrite", "insert", "delete"))
    if how == "overwrite":
        out = data[:pos] + junk + data[pos + length:]
    elif how == "insert":
        out = data[:pos] + junk + data[pos:]
    else:
        out = data[:pos] + data[pos + length:]
    return out, f"{how} {length} random bytes at {pos}"


def random_bytes(rng: random.Random, prefix: bytes = b"") -> tuple[bytes, str]:
    """Random data of a random size (0 to 256 KiB), optionally after a valid-looking prefix."""
    size = rng.choice((0, 1, 7, 8, 12, 100, 4096, 65536, 262144))
    return prefix + rng.randbytes(size), f"{size} random bytes after {len(prefix)}-byte prefix"


def _riff_chunks(data: bytes) -> dict[bytes, int]:
    """Offsets of the chunk headers of a RIFF/WAVE file (first of each id)."""
    out: dict[bytes, int] = {}
    pos = 12
    while pos + 8 <= len(data):
        cid, size = struct.unpack_from("<4sI", data, pos)
        out.setdefault(cid, pos)
        pos += 8 + size + (size & 1)
    return out


def wav_header_edit(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Set one WAV header field (RIFF size, format, channels, rate, byte rate, alignment, bits, data size)."""
    chunks = _riff_chunks(data)
    fmt, body = chunks.get(b"fmt "), chunks.get(b"data")
    fields: list[tuple[str, int, int]] = [("riff size", 4, 4)]
    if fmt is not None:
        fields += [("fmt size", fmt + 4, 4), ("format tag", fmt + 8, 2), ("channels", fmt + 10, 2),
                   ("sample rate", fmt + 12, 4), ("byte rate", fmt + 16, 4), ("block align", fmt + 20, 2),
                   ("bits per sample", fmt + 22, 2)]
    if body is not None:
        fields.append(("data size", body + 4, 4))
    name, pos, width = rng.choice(fields)
    value = rng.choice(EDGE_U16 + (3, 0xFFFE, 0x55) if width == 2 else EDGE_U32 + (8000, 44100, 48000, 192000))
    buf = bytearray(data)
    if pos + width <= len(buf):
        struct.pack_into("<H" if width == 2 else "<I", buf, pos, value)
    return bytes(buf), f"WAV {name} -> {value}"


def mp3_header_edit(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Damage the ID3 tag size or the first MPEG frame header (version, layer, bitrate, rate bits)."""
    buf = bytearray(data)
    if data[:3] == b"ID3" and rng.random() < 0.3:
        size = rng.choice((0, 1, 0x7F7F7F7F, rng.getrandbits(28)))
        syncsafe = bytes(((size >> s) & 0x7F) for s in (21, 14, 7, 0))
        buf[6:10] = syncsafe
        return bytes(buf), f"ID3 size -> {size}"
    start = 0
    if data[:3] == b"ID3" and len(data) >= 10:
        start = 10 + sum((b & 0x7F) << s for b, s in zip(data[6:10], (21, 14, 7, 0)))
    frame = next((i for i in range(start, min(len(data) - 1, start + 4096))
                  if data[i] == 0xFF and data[i + 1] & 0xE0 == 0xE0), None)
    if frame is None or frame + 4 > len(data):
        return flip_bits(data, rng, 4)
    byte = frame + rng.choice((1, 2, 3))
    buf[byte] = rng.getrandbits(8)
    return bytes(buf), f"MP3 frame header byte {byte - frame} at {frame} -> {buf[byte]:#04x}"
