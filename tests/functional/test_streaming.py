"""Streaming vs transactional: output flows while a streamable upload continues, and only after a spooled one."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from tests import synth
from tests.functional.helpers import (
    audio_msg,
    chunks,
    config,
    requests,
    run_call,
    running_server,
    spool_files,
    video_msg,
    wait_until,
)


def _noise_video(path: Path, frames: int) -> bytes:
    """A faststart MP4 of random pixels at qp 0: large (hundreds of KiB) for a tiny, short clip."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=25, options={"qp": "0", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(frames):
            img = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path.read_bytes()


def _throttled(video: bytes, audio: bytes, chunk: int, delay_s: float, progress: list):
    return requests(video, audio, config(), chunk=chunk, delay_s=delay_s, progress=progress)


def _upload_done(progress: list) -> float:
    return next(t for kind, t in progress if kind == "done")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    # Long enough (200 frames) that output starts before the encoder's look-ahead reaches the clip's end.
    d = tmp_path_factory.mktemp("stream")
    out = {"audio": synth.make_wav(d / "a.wav", seconds=8.0).read_bytes()}
    for layout in ("faststart", "fragmented", "transactional"):
        out[layout] = synth.make_video(d / f"{layout}.mp4", seconds=8.0, layout=layout).read_bytes()
    return out


@pytest.mark.parametrize("layout", ["faststart", "fragmented"])
def test_streamable_output_arrives_before_upload_ends(server, clips, layout, tmp_path):
    progress: list = []
    res = run_call(server, _throttled(clips[layout], clips["audio"], 4096, 0.01, progress))
    assert res.first_chunk_at is not None and res.first_chunk_at < _upload_done(progress)
    out = tmp_path / "o.mp4"
    out.write_bytes(res.video)
    assert synth.probe(out)["frame_count"] == 200


def test_transactional_output_only_after_upload(server, clips, tmp_path):
    progress: list = []
    res = run_call(server, _throttled(clips["transactional"], clips["audio"], 4096, 0.01, progress))
    assert res.first_chunk_at is not None and res.first_chunk_at > _upload_done(progress)
    out = tmp_path / "o.mp4"
    out.write_bytes(res.video)
    assert synth.probe(out)["frame_count"] == 200


def test_spool_file_lives_only_during_the_call(clips, tmp_path):
    spool = tmp_path / "spool"
    seen: list[int] = []

    def reqs():
        yield config()
        parts = chunks(clips["transactional"], 4096)
        for i, part in enumerate(parts):
            yield video_msg(part)
            if i == len(parts) // 2:
                # Mid-upload (gRPC may buffer what we yield before the server reads it, so give it time).
                wait_until(lambda: len(spool_files(spool)) > 0, timeout=10)
            seen.append(len(spool_files(spool)))
        yield audio_msg(clips["audio"])

    with running_server(spool_dir=spool) as srv:
        res = run_call(srv, reqs())
    assert res.video_chunks >= 1
    assert max(seen) == 1  # the upload went to one spool file ...
    assert spool_files(spool) == []  # ... removed once the call ended


def test_all_video_before_any_audio_does_not_deadlock(clips, tmp_path):
    """A client that sends the whole streamable video first, then the audio, with a tiny input buffer."""
    video = _noise_video(tmp_path / "noise.mp4", frames=50)
    audio = synth.make_wav(tmp_path / "a.wav", seconds=2.0).read_bytes()
    with running_server(stream_buffer_bytes=65536) as srv:
        assert len(video) > 2 * 65536
        reqs = [config(), *(video_msg(c) for c in chunks(video, 16384)), audio_msg(audio)]
        res = run_call(srv, reqs, timeout=60)
    out = tmp_path / "o.mp4"
    out.write_bytes(res.video)
    assert synth.probe(out)["frame_count"] == 50


@pytest.mark.parametrize("name,streams", [("face_static_720p_streamable.mp4", True),
                                          ("face_static_720p_transactional.mp4", False)])
def test_real_clips(server, media, name, streams, tmp_path):
    """The shared 720p clips: the streamable one answers during the upload, the other after it."""
    video = Path(media(name)).read_bytes()
    # 3 s of speech: 90 output frames, enough to get past the encoder's look-ahead before the end.
    audio = synth.make_wav(tmp_path / "a.wav", seconds=3.0).read_bytes()
    progress: list = []
    cfg = config(output_video_encoding={"lossy": {"bitrate_mbps": 2, "idr_interval": 4}})
    reqs = requests(video, audio, cfg, chunk=64 * 1024, delay_s=0.1, progress=progress)
    res = run_call(server, reqs, timeout=120)
    done = _upload_done(progress)
    assert (res.first_chunk_at < done) is streams
    out = tmp_path / "o.mp4"
    out.write_bytes(res.video)
    info = synth.probe(out)
    assert (info["width"], info["height"]) == (1280, 720) and info["frame_count"] == 90


def test_load_four_times_the_limit(tmp_path):
    """8 clients at once against 2 slots + 2 queued: each stream is correct or cleanly refused; nothing leaks."""
    import concurrent.futures
    import threading

    import grpc

    from tests.functional.helpers import open_fds, wait_until

    audio = synth.make_wav(tmp_path / "a.wav", seconds=2.0).read_bytes()
    videos = {layout: synth.make_video(tmp_path / f"{layout}.mp4", seconds=2.0, layout=layout).read_bytes()
              for layout in ("faststart", "transactional")}
    spool = tmp_path / "spool"
    with running_server(max_concurrency_per_gpu=2, max_queued_streams=2, admission_timeout_s=20,
                        spool_dir=spool) as srv:
        run_call(srv, requests(videos["faststart"], audio, config()))  # warm-up
        threads, fds = threading.active_count(), open_fds()

        def client(i: int) -> str:
            layout = "faststart" if i % 2 else "transactional"
            try:
                res = run_call(srv, requests(videos[layout], audio, config(), chunk=8192, delay_s=0.005), timeout=60)
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
                assert "processing slots are busy" in err.details()
                return "refused"
            out = tmp_path / f"out{i}.mp4"
            out.write_bytes(res.video)
            info = synth.probe(out)
            assert info["frame_count"] == 50 and info["pts"][0] == 0.0
            return "ok"

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(client, range(8)))
        assert outcomes.count("ok") >= 4 and outcomes.count("ok") + outcomes.count("refused") == 8
        assert wait_until(lambda: srv.server.admission.active == 0)
        assert wait_until(lambda: threading.active_count() <= threads, timeout=5), threading.enumerate()
        assert wait_until(lambda: open_fds() <= fds, timeout=5)
        assert spool_files(spool) == []
