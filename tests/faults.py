"""Faults on purpose, each a function that provokes one against a real server and returns what happened: the tests
(tests/functional/test_faults.py) assert on it, benchmarks/bench_faults.py reports it as figures."""

from __future__ import annotations

import concurrent.futures
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2, lipsync_pb2_grpc
from tests import synth
from tests.functional.helpers import ServerThread, collect, config, requests, spool_files, wait_until
from tests.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]


def clips(directory: Path) -> dict[str, bytes]:
    """The inputs of the scenarios: 2 s at 160x120 in both layouts, a 6 s 640x480 non-streamable one, speech."""
    return {"video": synth.make_video(directory / "v.mp4", seconds=2.0).read_bytes(),
            "audio": synth.make_wav(directory / "a.wav", seconds=2.0).read_bytes(),
            "long_audio": synth.make_wav(directory / "la.wav", seconds=6.0).read_bytes(),
            "transactional": synth.make_video(directory / "t.mp4", seconds=2.0, layout="transactional").read_bytes(),
            "big_transactional": synth.make_video(directory / "bt.mp4", seconds=6.0, size=(640, 480),
                                                  layout="transactional").read_bytes()}


def call(target: str, reqs: Iterator[lipsync_pb2.LipsyncRequest], timeout: float = 60) -> tuple[str, str, bytes]:
    """One call: (status name, message, output bytes)."""
    with grpc.insecure_channel(target) as channel:
        try:
            res = collect(lipsync_pb2_grpc.LipSyncServiceStub(channel).Lipsync(reqs, timeout=timeout))
        except grpc.RpcError as err:
            return err.code().name, err.details() or "", b""
    return "OK", "", res.video


def frames_of(video: bytes) -> int:
    return synth.probe(video)["frame_count"] if video else 0


# SIGTERM under load -------------------------------------------------------------------------------

def sigterm_under_load(clip: dict[str, bytes], slots: int = 2, clients: int = 8) -> dict:
    """`clients` slow calls at `slots` slots (the rest queued), then SIGTERM; a new call once it stops being ready.

    Returns:
        outcomes (status, message, output frames) of the calls, the late call's status, the exit status and the
        seconds from SIGTERM to exit.
    """
    server = ServerProcess({"NV_AI4M_LS_PROCESSOR": "passthrough", "NV_AI4M_MAX_CONCURRENCY_PER_GPU": str(slots),
                            "NV_AI4M_MAX_QUEUED_STREAMS": str(clients - slots), "NV_AI4M_ADMISSION_TIMEOUT_S": "60",
                            "NV_AI4M_DRAIN_TIMEOUT_S": "60", "NV_AI4M_KEEPALIVE_INTERVAL_S": "0.5"}).start()
    try:
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            calls = [pool.submit(call, server.target,
                                 requests(clip["video"], clip["audio"], config(), chunk=8192, delay_s=0.1))
                     for _ in range(clients)]
            queued = wait_until(lambda: server.metrics().get("lipsync_streams_queued") == clients - slots, timeout=30)
            assert server.proc is not None
            t0 = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: not server.ready(), timeout=10)
            late = call(server.target, requests(clip["video"], clip["audio"], config()), timeout=10)
            outcomes = [c.result(90) for c in calls]
        status = server.proc.wait(90)
        exit_s = time.monotonic() - t0
    finally:
        server.stop()
    return {"queued_before": queued, "outcomes": [(code, msg, frames_of(video)) for code, msg, video in outcomes],
            "late": late[:2], "exit_status": status, "exit_s": round(exit_s, 2)}


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


def client_killed(srv: ServerThread, clip: dict[str, bytes], phase: str, scratch: Path) -> dict:
    """A client process killed (SIGKILL) mid-upload or mid-download against an in-process server.

    Returns:
        whether the call held a slot first, and the seconds from the kill until its slot was free.
    """
    video, audio = scratch / f"{phase}.mp4", scratch / f"{phase}.wav"
    # Mid-download: an output larger than what the transport buffers for a client that reads nothing more.
    video.write_bytes(clip["big_transactional"] if phase == "download" else clip["video"])
    audio.write_bytes(clip["long_audio"])
    script = _CLIENT.format(root=str(ROOT), video=str(video), audio=str(audio), target=srv.target, phase=phase)
    client = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    admission = srv.server.admission
    assert admission is not None
    try:
        held = wait_until(lambda: admission.active == 1, timeout=30)
        if phase == "download":
            assert client.stdout is not None
            held = held and client.stdout.readline().strip() == "reading"
        else:
            time.sleep(1.0)  # some of the upload is in
        client.kill()
        client.wait(10)
        t0 = time.monotonic()
        wait_until(lambda: admission.active == 0, timeout=10, interval=0.005)
        freed_s = time.monotonic() - t0
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(10)
    return {"held_a_slot": held, "freed_s": round(freed_s, 3)}


# The spool's disk full -------------------------------------------------------------------------------

def can_mount_tmpfs() -> bool:
    """Whether this machine lets us mount a small tmpfs in a mount namespace of our own (unshare -rm)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /tmp"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def spool_disk_full(clip: dict[str, bytes], spool: Path, size_kib: int = 64) -> dict:
    """The server's spool directory is a `size_kib` tmpfs in the server's own mount namespace; a non-streamable
    upload larger than that, then one that fits.

    Returns:
        the first call's status and message, spool files left after it (as the server sees its directory), the
        second call's status and output frames, files left after it, and files in the real directory.
    """
    spool.mkdir(parents=True, exist_ok=True)
    wrap = ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size={size_kib}k tmpfs "{spool}" && exec "$@"', "sh"]
    server = ServerProcess({"NV_AI4M_LS_PROCESSOR": "passthrough", "NV_AI4M_SPOOL_DIR": str(spool)},
                           wrap=wrap).start()
    try:
        inside = Path(f"/proc/{server.pid}/root") / str(spool).lstrip("/")  # the spool as the server sees it
        big = call(server.target, requests(clip["big_transactional"], clip["audio"], config()))
        wait_until(lambda: spool_files(inside) == [], timeout=5)
        left_after_big = len(spool_files(inside))
        small = call(server.target, requests(clip["transactional"], clip["audio"], config()))
        left_after_small = len(spool_files(inside))
    finally:
        server.stop()
    return {"upload_bytes": len(clip["big_transactional"]), "spool_kib": size_kib, "big": big[:2],
            "left_after_big": left_after_big, "small": (small[0], frames_of(small[2])),
            "left_after_small": left_after_small, "left_outside": len(list(spool.iterdir()))}


# Triton killed and restarted under load -------------------------------------------------------------

TRITON_REPO = ROOT / "triton_repo"
# A 2 s 160x120 clip whose every frame announces a speaking face at BOX (the generator redraws it), so every frame
# needs the inference server.
TRITON_SECONDS, TRITON_FPS, TRITON_SIZE = 2.0, 25, (160, 120)
TRITON_FRAMES = int(TRITON_SECONDS * TRITON_FPS)
BOX = (50.0, 20.0, 60.0, 70.0)


def triton_clip(directory: Path) -> dict[str, bytes]:
    return {"video": synth.make_video(directory / "tv.mp4", seconds=TRITON_SECONDS, fps=TRITON_FPS,
                                      size=TRITON_SIZE, still=True).read_bytes(),
            "audio": synth.make_wav(directory / "ta.wav", seconds=TRITON_SECONDS).read_bytes()}


def triton_requests(clip: dict[str, bytes], delay_s: float = 0.0) -> Iterator[lipsync_pb2.LipsyncRequest]:
    """Config, a speaking face in every frame (no detector involved), then the media (paced by `delay_s`)."""
    frames = []
    for i in range(TRITON_FRAMES):
        msg = lipsync_pb2.SpeakerInfoPerFrame(frame_id=i)
        info = msg.speaker_infos.add()
        info.speaker_bbox.x, info.speaker_bbox.y, info.speaker_bbox.width, info.speaker_bbox.height = BOX
        info.speaker_id, info.is_speaking = 1, True
        frames.append(msg)
    data = lipsync_pb2.LipsyncInputData()
    data.per_frame_speaker_infos.extend(frames)
    yield config(is_speaker_info_provided=True)
    yield lipsync_pb2.LipsyncRequest(input=data)
    yield from requests(clip["video"], clip["audio"], chunk=2048, delay_s=delay_s)


def triton_killed_under_load(triton: object, srv: ServerThread, clip: dict[str, bytes], clients: int = 8,
                             up_s: float = 8.0, down_s: float = 6.0, after_s: float = 15.0) -> dict:
    """`clients` workers call without pause (4x the 2 slots by default); Triton is killed after `up_s`, started
    again `down_s` later (same ports), and the calls go on for `after_s`.

    Args:
        triton: a started LocalTriton.
        srv: an in-process server on that Triton (processor neural, backend triton).

    Returns:
        outcomes per phase (up, down, back: by the call's end), seconds from the kill to NOT_SERVING and from the
        restart to SERVING and to the first OK call, and every status message that was neither OK nor UNAVAILABLE.
    """
    phase = ["up"]
    stop = time.monotonic() + up_s + down_s + after_s + 60
    records: list[tuple[str, str, str, float]] = []
    first_ok_after: list[float] = []
    restarted_at: list[float] = []

    def worker() -> None:
        while time.monotonic() < stop and phase[0] != "done":
            code, msg, video = call(srv.target, triton_requests(clip, delay_s=0.02), timeout=120)
            records.append((phase[0], code, msg, time.monotonic()))
            if code == "OK" and phase[0] == "back" and not first_ok_after:
                first_ok_after.append(time.monotonic() - restarted_at[0])

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        workers = [pool.submit(worker) for _ in range(clients)]
        time.sleep(up_s)
        t_kill = time.monotonic()
        triton.kill()  # type: ignore[attr-defined]
        phase[0] = "down"
        wait_until(lambda: not srv.server.ready, timeout=30, interval=0.01)
        not_serving_s = time.monotonic() - t_kill
        time.sleep(max(0.0, down_s - not_serving_s))
        t_restart = time.monotonic()
        restarted_at.append(t_restart)
        triton.start(timeout_s=120)  # type: ignore[attr-defined]
        phase[0] = "back"
        wait_until(lambda: srv.server.ready, timeout=60, interval=0.01)
        serving_s = time.monotonic() - t_restart
        wait_until(lambda: bool(first_ok_after), timeout=after_s + 60)
        time.sleep(after_s)
        phase[0] = "done"
        for w in workers:
            w.result(180)
    by_phase: dict[str, dict[str, int]] = {}
    for ph, code, _, _ in records:
        by_phase.setdefault(ph, {}).setdefault(code, 0)
        by_phase[ph][code] += 1
    return {"clients": clients, "outcomes": by_phase, "not_serving_s": round(not_serving_s, 2),
            "serving_again_s": round(serving_s, 2),
            "first_ok_after_restart_s": round(first_ok_after[0], 2) if first_ok_after else None,
            "other_messages": sorted({f"{code}: {msg}" for _, code, msg, _ in records
                                      if code not in ("OK", "UNAVAILABLE")})}
