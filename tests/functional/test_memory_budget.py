"""What a client can make one call hold in server memory is bounded: past NV_AI4M_MAX_STREAM_MEMORY_BYTES the call
ends with RESOURCE_EXHAUSTED naming what holds the memory, and the server serves the next call."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
import pytest

from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2
from tests import synth
from tests.functional.helpers import (
    audio_msg,
    chunks,
    config,
    expect_error,
    requests,
    run_call,
    running_server,
    speaker_msg,
    video_msg,
)

LIMIT = 32 * 2**20
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("budget")
    return {"video": synth.make_video(d / "v.mp4", seconds=1.0).read_bytes(),
            "audio": synth.make_wav(d / "a.wav", seconds=1.0).read_bytes(),
            # 120 s of 48 kHz stereo: 23 MB compressed, 61 MB once decoded at the service's two rates.
            "long_audio": synth.make_wav(d / "la.wav", seconds=120.0, rate=48000, channels=2).read_bytes()}


def _peak(caplog: pytest.LogCaptureFixture) -> list[int]:
    return [json.loads(r.getMessage())["memory_peak_bytes"] for r in caplog.records
            if '"request_finished"' in r.getMessage()]


def test_a_flood_of_speaker_data_before_the_video_is_refused(clip, caplog):
    caplog.set_level(logging.INFO, logger="lipsync_service.server.session")
    frames = []
    for i in range(100_000):  # the video has 25 frames, which the server cannot know yet
        msg = lipsync_pb2.SpeakerInfoPerFrame(frame_id=i)
        for _ in range(2):
            msg.speaker_infos.add().speaker_bbox.width = 10
        frames.append(msg)
    batches = [speaker_msg(frames[i:i + 20_000]) for i in range(0, len(frames), 20_000)]
    with running_server(max_stream_memory_bytes=LIMIT) as srv:
        msg = expect_error(srv, [config(is_speaker_info_provided=True), *batches,
                                 *requests(clip["video"], clip["audio"])], EXHAUSTED)
        assert msg.startswith("speaker data: this call would hold more than its 32.0 MiB of server memory "
                              "(NV_AI4M_MAX_STREAM_MEMORY_BYTES; held now: speaker data ")
        assert msg.endswith("send speaker data only for the video's frames, in batches along with the video")
        assert run_call(srv, requests(clip["video"], clip["audio"], config())).video_chunks >= 1
    assert max(_peak(caplog)) > LIMIT  # what was asked for; what is held stays at most the limit


def test_speech_sent_far_ahead_of_the_video_is_held_compressed_up_to_the_limit(clip, caplog):
    caplog.set_level(logging.INFO, logger="lipsync_service.server.session")
    with running_server(max_stream_memory_bytes=LIMIT, stream_buffer_bytes=65536) as srv:
        # Within the limit: decoded only 20 s ahead, the rest waits compressed until the video comes.
        res = run_call(srv, [config(), *[audio_msg(c) for c in chunks(clip["long_audio"])],
                             *[video_msg(c) for c in chunks(clip["video"])]])
        assert synth.probe(res.video)["frame_count"] == 25
        # Twice as much speech ahead of the video: refused once the call would hold more than the limit.
        twice = clip["long_audio"] + clip["long_audio"][44:]
        msg = expect_error(srv, [config(), *[audio_msg(c) for c in chunks(twice)],
                                 *[video_msg(c) for c in chunks(clip["video"])]], EXHAUSTED)
        assert msg.startswith("speech audio: the upload runs ahead of what the job can use: this call would hold more "
                              "than its 32.0 MiB of server memory")
        assert "upload buffered ahead of the job" in msg and "decoded audio" in msg
        assert msg.endswith("interleave the video and audio chunks (send both as time advances)")
    ok, refused = _peak(caplog)
    assert ok < LIMIT and refused > LIMIT


@pytest.mark.parametrize(("allocator", "expected"), [("malloc", b"PYTHONMALLOC=malloc"), ("pymalloc", None)])
def test_serve_runs_python_on_the_c_heap(allocator, expected):
    """`serve` restarts itself (same process) with PYTHONMALLOC=malloc unless told otherwise (server/heap.py)."""
    from tests.server_process import ServerProcess

    with ServerProcess({"NV_AI4M_LS_PROCESSOR": "passthrough", "NV_AI4M_PYTHON_ALLOCATOR": allocator}) as server:
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")  # the pid Popen started
        assert [v for v in environ if v.startswith(b"PYTHONMALLOC=")] == ([expected] if expected else [])
