"""Errors of our own sources never cross FFmpeg's read callback: the real cause is raised, nothing is printed."""

from __future__ import annotations

import threading

import pytest

from lipsync_service.errors import Cancelled, InvalidInput
from lipsync_service.job import AudioCodec
from lipsync_service.media.audio import AudioTrack
from lipsync_service.media.demux import VideoSource
from lipsync_service.media.pipe import ByteStream
from lipsync_service.settings import Settings
from tests import synth

DROPPED = "PyAV library exception being dropped"


def _abort_soon(stream: ByteStream) -> threading.Timer:
    timer = threading.Timer(0.3, lambda: stream.abort(Cancelled(f"{stream.name}: the call ended")))
    timer.start()
    return timer


@pytest.mark.parametrize("head", [100, 3000])
def test_an_upload_aborted_under_the_demuxer_is_cancelled_without_a_traceback(tmp_path, capfd, head):
    data = synth.make_video(tmp_path / "v.mp4", seconds=1.0).read_bytes()
    stream = ByteStream(1 << 20, name="video")
    stream.write(data[:head])  # the demuxer waits for the rest inside its header parse, or its first frames
    timer = _abort_soon(stream)
    source = VideoSource(stream, Settings())
    with pytest.raises(Cancelled, match="^video: the call ended$"):
        source.open()
        for _ in source.frames():
            pass
    timer.join()
    source.close()
    assert DROPPED not in capfd.readouterr().err


def test_a_matroska_upload_is_named_without_a_traceback(capfd):
    stream = ByteStream(1 << 20, name="video")
    stream.write(b"\x1a\x45\xdf\xa3" + bytes(5000))
    stream.close()
    with pytest.raises(InvalidInput, match="Matroska/WebM"):
        VideoSource(stream, Settings()).open()
    assert DROPPED not in capfd.readouterr().err


def test_speech_aborted_under_the_decoder_is_cancelled_without_a_traceback(tmp_path, capfd):
    data = synth.make_wav(tmp_path / "a.wav", seconds=1.0).read_bytes()
    stream = ByteStream(1 << 20, name="speech audio")
    stream.write(data[:2000])
    track = AudioTrack(stream, AudioCodec.WAV)
    track.start()
    timer = _abort_soon(stream)
    with pytest.raises(Cancelled):
        track.wait_for(10.0, timeout=10)
    timer.join()
    track.close()
    assert DROPPED not in capfd.readouterr().err
