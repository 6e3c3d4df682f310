"""Streamable vs transactional MP4 detection from the first bytes."""

from __future__ import annotations

import struct

import pytest

from lipsync_service.errors import InvalidInput
from lipsync_service.media.probe import bytes_needed, classify_mp4


def box(kind: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def large_box(kind: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I4sQ", 1, kind, 16 + len(payload)) + payload


FTYP = box(b"ftyp", b"isom\x00\x00\x02\x00isomiso2avc1mp41")


def test_moov_after_ftyp_is_streamable():
    assert classify_mp4(FTYP + box(b"moov", b"x" * 100)) == "streamable"


def test_padding_boxes_are_skipped():
    head = FTYP + box(b"free", b"\0" * 30) + large_box(b"wide") + box(b"uuid", b"u" * 16) + box(b"moov")
    assert classify_mp4(head) == "streamable"


def test_mdat_first_is_transactional():
    assert classify_mp4(FTYP + box(b"free") + large_box(b"mdat", b"\0" * 64)) == "transactional"


def test_unknown_box_before_moov_is_transactional():
    assert classify_mp4(FTYP + box(b"abcd") + box(b"moov")) == "transactional"


def test_need_more_until_the_deciding_header_arrives():
    full = FTYP + box(b"free", b"\0" * 100) + box(b"moov")
    # The moov header is the last 8 bytes: every shorter prefix is undecided.
    for n in range(len(full)):
        assert classify_mp4(full[:n]) == "need_more", n
        assert n < bytes_needed(full[:n]) <= len(full), n
    assert classify_mp4(full) == "streamable"
    assert bytes_needed(full) == 0


def test_bytes_needed_skips_padding_payload():
    head = FTYP + struct.pack(">I4s", 8 + 1000, b"free")
    assert classify_mp4(head) == "need_more"
    assert bytes_needed(head) == len(FTYP) + 1008 + 8


def test_large_size_header_needs_sixteen_bytes():
    head = FTYP + struct.pack(">I4s", 1, b"free")
    assert bytes_needed(head) == len(FTYP) + 16


@pytest.mark.parametrize("data", [b"GARBAGE!" * 4, b"\x00\x00\x00\x18moov" + b"\0" * 16,
                                  b"RIFF\x24\x00\x00\x00WAVEfmt "])
def test_non_mp4_is_rejected(data):
    with pytest.raises(InvalidInput, match="not an MP4 file"):
        classify_mp4(data)


def test_impossible_box_size_is_rejected():
    with pytest.raises(InvalidInput, match="corrupt"):
        classify_mp4(struct.pack(">I4s", 4, b"ftyp") + b"\0" * 16)


def test_real_encoder_layouts(tmp_path):
    synth = pytest.importorskip("tests.synth")
    for layout, expected in (("faststart", "streamable"), ("fragmented", "streamable"),
                             ("transactional", "transactional")):
        path = synth.make_video(tmp_path / f"{layout}.mp4", seconds=0.4, size=(64, 48), layout=layout)
        head = path.read_bytes()[:4096]
        assert classify_mp4(head) == expected, layout
