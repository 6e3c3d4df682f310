"""Faults on purpose: SIGTERM while calls run and wait, clients that vanish mid-upload and mid-download, the spool's
disk full. Each ends the way docs/protocol.md promises, and leaves nothing behind. (Triton killed and restarted
under load: tests/functional/test_triton_faults.py; the figures of all of them: benchmarks/bench_faults.py.)"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import pytest

from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2_grpc
from tests import synth
from tests.functional.helpers import collect, config, requests, run_call, running_server, spool_files, wait_until
from tests.server_process import ServerProcess


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("faults")
    return {"video": synth.make_video(d / "v.mp4", seconds=2.0).read_bytes(),
            "audio": synth.make_wav(d / "a.wav", seconds=2.0).read_bytes(),
            "transactional": synth.make_video(d / "t.mp4", seconds=2.0, layout="transactional").read_bytes(),
            "big_transactional": synth.make_video(d / "bt.mp4", seconds=6.0, size=(640, 480),
                                                  layout="transactional").read_bytes()}


def _call(target: str, reqs, timeout: float = 60) -> tuple[str, str, bytes]:
    with grpc.insecure_channel(target) as channel:
        try:
            res = collect(lipsync_pb2_grpc.LipSyncServiceStub(channel).Lipsync(reqs, timeout=timeout))
        except grpc.RpcError as err:
            return err.code().name, err.details() or "", b""
    return "OK", "", res.video


# SIGTERM under load -------------------------------------------------------------------------------

def test_sigterm_under_load_finishes_running_calls_refuses_the_rest_and_exits_zero(clip):
    """4x the concurrency limit: the 2 running calls finish with their whole output, the 6 queued ones and any new
    one get UNAVAILABLE, the process exits 0."""
    server = ServerProcess({"NV_AI4M_LS_PROCESSOR": "passthrough", "NV_AI4M_MAX_CONCURRENCY_PER_GPU": "2",
                            "NV_AI4M_MAX_QUEUED_STREAMS": "6", "NV_AI4M_ADMISSION_TIMEOUT_S": "60",
                            "NV_AI4M_DRAIN_TIMEOUT_S": "60", "NV_AI4M_KEEPALIVE_INTERVAL_S": "0.5"}).start()
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            calls = [pool.submit(_call, server.target,
                                 requests(clip["video"], clip["audio"], config(), chunk=8192, delay_s=0.1))
                     for _ in range(8)]
            assert wait_until(lambda: server.metrics().get("lipsync_streams_queued") == 6, timeout=30)
            t0 = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            assert wait_until(lambda: not server.ready(), timeout=10)
            late = _call(server.target, requests(clip["video"], clip["audio"], config()), timeout=10)
            outcomes = [c.result(90) for c in calls]
        status = server.proc.wait(90)
        drain_s = time.monotonic() - t0
    finally:
        server.stop()
    assert status == 0
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == ["OK"] * 2 + ["UNAVAILABLE"] * 6, [(c, m) for c, m, _ in outcomes]
    for code, message, video in outcomes:
        if code == "OK":
            assert synth.probe(video)["frame_count"] == 50
        else:
            assert message == "server is shutting down"
    assert late[0] == "UNAVAILABLE"
    assert drain_s < 60


# Clients that vanish -------------------------------------------------------------------------------

# A client process that uploads slowly (mid-upload) or reads one chunk and then nothing (mid-download), and is
# killed with SIGKILL: no cancel, no goodbye, the kernel resets its connection.
_CLIENT = textwrap.dedent("""
    import sys, time, grpc
    sys.path.insert(0, {root!r})
    from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2_grpc
    from tests.functional.helpers import config, requests
    video, audio = open({video!r}, "rb").read(), open({audio!r}, "rb").read()
    stub = lipsync_pb2_grpc.LipSyncServiceStub(grpc.insecure_channel({target!r}))
    if {phase!r} == "upload":
        reqs = requests(video, audio, config(), chunk=2048, delay_s=0.2)
    else:
        reqs = requests(video, audio, config())
    for response in stub.Lipsync(reqs, timeout=120):
        if response.WhichOneof("lipsync_response") == "video_file_data":
            print("reading", flush=True)
            time.sleep(120)
""")


@pytest.mark.parametrize("phase", ["upload", "download"])
def test_a_client_killed_mid_call_frees_its_slot_at_once(clip, tmp_path, phase):
    video, audio = tmp_path / "v.mp4", tmp_path / "a.wav"
    # Mid-download: the output must outgrow what the transport buffers for a client that reads nothing more.
    video.write_bytes(clip["big_transactional"] if phase == "download" else clip["video"])
    audio.write_bytes(synth.make_wav(tmp_path / "la.wav", seconds=6.0).read_bytes())
    root = str(Path(__file__).resolve().parents[2])
    with running_server(keepalive_interval_s=0.5, output_stall_timeout_s=60) as srv:
        script = _CLIENT.format(root=root, video=str(video), audio=str(audio), target=srv.target, phase=phase)
        client = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            assert wait_until(lambda: srv.server.admission.active == 1, timeout=30)
            if phase == "download":
                assert client.stdout is not None and client.stdout.readline().strip() == "reading"
            else:
                time.sleep(1.0)  # some of the upload is in
            client.kill()
            client.wait(10)
            t0 = time.monotonic()
            assert wait_until(lambda: srv.server.admission.active == 0, timeout=10)
            freed_s = time.monotonic() - t0
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(10)
        assert freed_s < 1.0, f"the slot came back after {freed_s:.2f} s"
        # The call's last line follows its slot's release.
        assert wait_until(lambda: srv.metrics.registry.get_sample_value(
            "lipsync_streams_total", {"code": "CANCELLED"}) == 1, timeout=5)
        # The server goes on serving.
        assert run_call(srv, requests(clip["video"], clip["audio"], config())).video_chunks >= 1


# The spool's disk full -------------------------------------------------------------------------------

def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                            "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="no mount namespace here (unshare -rm) for a small tmpfs")
def test_the_spool_disk_full_is_resource_exhausted_and_leaves_nothing(clip, tmp_path):
    """The server's spool directory is a 64 KiB tmpfs (its own mount namespace): a non-streamable upload larger
    than that fails with RESOURCE_EXHAUSTED saying why, its partial file is removed, and smaller ones still work."""
    spool = tmp_path / "spool"
    spool.mkdir()
    wrap = ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size=64k tmpfs "{spool}" && exec "$@"', "sh"]
    server = ServerProcess({"NV_AI4M_LS_PROCESSOR": "passthrough", "NV_AI4M_SPOOL_DIR": str(spool)},
                           wrap=wrap).start()
    try:
        inside = Path(f"/proc/{server.pid}/root") / str(spool).lstrip("/")  # the spool as the server sees it
        assert len(clip["big_transactional"]) > 64 * 1024 > len(clip["transactional"])
        code, message, _ = _call(server.target, requests(clip["big_transactional"], clip["audio"], config()))
        assert code == "RESOURCE_EXHAUSTED"
        assert message == "video: spooling the upload failed: No space left on device"
        assert wait_until(lambda: spool_files(inside) == [], timeout=5)
        code, _, video = _call(server.target, requests(clip["transactional"], clip["audio"], config()))
        assert code == "OK" and synth.probe(video)["frame_count"] == 50
        assert spool_files(inside) == []
        assert os.listdir(spool) == []  # nothing reached the real directory either
    finally:
        server.stop()
