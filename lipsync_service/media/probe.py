"""Decide from the first bytes of an MP4 whether it can be processed while it uploads."""

from __future__ import annotations

import struct
from typing import Literal

from lipsync_service.errors import InvalidInput

Layout = Literal["streamable", "transactional", "need_more"]

# Boxes that may sit between ftyp and moov without changing where the index is.
_PADDING_BOXES = {b"free", b"skip", b"wide", b"uuid", b"pdin"}
# A plain header is 8 bytes; one with a 64-bit size ("largesize") is 16.
_HEADER = 8
_LARGE_HEADER = 16

# Matroska and WebM files start with the EBML header's ID.
EBML_MAGIC = b"\x1a\x45\xdf\xa3"
MATROSKA_MESSAGE = (
    "video: the data is Matroska/WebM (.mkv/.webm), not MP4: the service needs an MP4 (ISO BMFF) file. "
    "Remux it without re-encoding: ffmpeg -i in.mkv -c copy out.mp4 (if its video is not H.264, re-encode "
    "instead: ffmpeg -i in.webm -c:v libx264 -c:a aac out.mp4)"
)


def refuse_matroska(head: bytes) -> None:
    """Raise InvalidInput with the remux advice when `head` (the first bytes of a video) is Matroska/WebM.

    Raises:
        InvalidInput: the data starts with the EBML magic bytes 1A 45 DF A3.
    """
    if head.startswith(EBML_MAGIC):
        raise InvalidInput(MATROSKA_MESSAGE)


def _box_header(head: bytes, pos: int) -> tuple[bytes, int, int] | None:
    """(type, total size or 0 for "to end of file", header length) of the box at pos, None if cut off."""
    if len(head) - pos < _HEADER:
        return None
    size, kind = struct.unpack_from(">I4s", head, pos)
    if size == 1:
        if len(head) - pos < _LARGE_HEADER:
            return None
        (size,) = struct.unpack_from(">Q", head, pos + _HEADER)
        return kind, size, _LARGE_HEADER
    return kind, size, _HEADER


def _walk(head: bytes) -> tuple[Layout, int]:
    """Classification and, for need_more, how many bytes are needed in total to decide."""
    refuse_matroska(head)
    first = _box_header(head, 0)
    if first is None:
        return "need_more", _HEADER if len(head) < _HEADER else _LARGE_HEADER
    kind, size, hdr = first
    if kind != b"ftyp":
        raise InvalidInput("video: the data is not an MP4 file (no ftyp box)")
    if size < hdr:
        raise InvalidInput("video: the MP4 header is corrupt (ftyp box size is invalid)")
    pos = size
    while True:
        box = _box_header(head, pos)
        if box is None:
            # Only the next box header is needed; the padding boxes' payload is skipped by size.
            return "need_more", pos + _LARGE_HEADER if len(head) - pos >= _HEADER else pos + _HEADER
        kind, size, hdr = box
        if kind == b"moov":
            return "streamable", pos
        if kind in _PADDING_BOXES:
            if size == 0:
                # A padding box "to the end of the file" leaves no room for a moov after it.
                return "transactional", pos
            if size < hdr:
                raise InvalidInput(f"video: the MP4 header is corrupt (box {kind!r} has an invalid size)")
            pos += size
            continue
        # mdat (or anything else) before the index: the frames cannot be located until the end.
        return "transactional", pos


def classify_mp4(head: bytes) -> Layout:
    """Classify an MP4 from its first bytes.

    "streamable": ftyp followed (after optional padding boxes) by moov, i.e. a faststart or a
    fragmented MP4, whose frames can be decoded as the bytes arrive. "transactional": media data or
    any other box comes before moov, so the whole file is needed first. "need_more": the bytes seen
    so far do not decide it (call again with more; `bytes_needed` says how many).

    Args:
        head: the first bytes of the upload (any length).

    Returns:
        The layout.

    Raises:
        InvalidInput: the data does not start with an ftyp box (Matroska/WebM is named, with how to remux it),
            or a box size is impossible.
    """
    layout, _ = _walk(head)
    return layout


def bytes_needed(head: bytes) -> int:
    """How many leading bytes `classify_mp4` needs to decide, given what `head` already shows.

    Returns:
        0 when `head` already decides the layout, else the total length to wait for (larger than
        len(head); call again once it arrives: padding boxes may ask for more).

    Raises:
        InvalidInput: as `classify_mp4`.
    """
    layout, need = _walk(head)
    return need if layout == "need_more" else 0
