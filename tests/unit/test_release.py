"""What a finished or failed job held is let go at once, not when the garbage collector happens to run: decoder
and encoder threads, and the locals an exception's traceback keeps."""

from __future__ import annotations

import gc
import os
import weakref
from fractions import Fraction

import pytest

from lipsync_service.errors import InvalidInput, release_frames
from lipsync_service.job import AudioCodec, VideoEncodingSpec
from lipsync_service.media.demux import VideoSource
from lipsync_service.media.encode import OutputWriter
from lipsync_service.media.types import VideoInfo
from lipsync_service.settings import Settings
from tests import synth


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


class _Held:
    """Stands for a decoder or a processor: something big a frame's locals keep alive."""


def _fail_holding(held: _Held) -> None:
    keep = held  # noqa: F841 - the local the traceback keeps alive
    raise InvalidInput("bad input")


def test_release_frames_lets_the_locals_of_a_kept_exception_go():
    gc.disable()  # only reference counting frees anything here
    try:
        held = _Held()
        ref = weakref.ref(held)
        try:
            _fail_holding(held)
        except InvalidInput as exc:
            kept = exc
        del held
        assert ref() is not None, "the traceback keeps the frame's locals"
        release_frames(kept)
        assert ref() is None
        assert "_fail_holding" in "".join(__import__("traceback").format_exception(kept)), "the traceback still prints"
    finally:
        gc.enable()


def test_release_frames_follows_causes_and_contexts():
    gc.disable()
    try:
        held = _Held()
        ref = weakref.ref(held)
        try:
            try:
                _fail_holding(held)
            except InvalidInput as inner:
                raise RuntimeError("wrapped") from inner
        except RuntimeError as exc:
            kept = exc
        del held
        release_frames(kept)
        assert ref() is None
    finally:
        gc.enable()


def test_a_closed_video_source_stops_its_decoder_threads(tmp_path):
    path = synth.make_video(tmp_path / "v.mp4", seconds=0.5, size=(320, 240))
    before = _threads()
    source = VideoSource(path, Settings())
    next(source.frames())
    assert _threads() > before, "the decoder runs frame threads"
    source.close()
    assert _threads() == before  # while the VideoSource object itself is still alive


@pytest.mark.parametrize("finish", ["close", "abort"])
def test_a_closed_or_aborted_writer_stops_its_encoder_threads(finish):
    before = _threads()
    writer = OutputWriter(lambda b: None, VideoInfo(width=320, height=240, fps=Fraction(25), pix_fmt="yuv420p",
                                                            frame_count=None),
                          VideoEncodingSpec(), AudioCodec.OPUS)
    assert _threads() > before, "x264 runs threads of its own"
    getattr(writer, finish)()
    assert _threads() == before
