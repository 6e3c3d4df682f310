"""Issue 6 load figure: many clients at once against one server process, with admission doing its job.

Starts `python -m lipsync_service serve` (pass-through processor unless --processor neural), then runs
`--clients` calls at once (default: four times the slot limit) of the shared 720p streamable clip with
speech of the same length, paced like a real upload. Reports streams completed and refused, frames per
second served in aggregate, time to first chunk, and the server's peak memory (VmHWM).

Usage: python benchmarks/bench_load.py [--slots 2] [--queue 2] [--clients N] [--processor passthrough]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import _media  # noqa: E402

from lipsync_service._proto.nvidia.ai4m.audio.v1 import audio_pb2  # noqa: E402
from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2, lipsync_pb2_grpc  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402

CHUNK = 64 * 1024
FRAMES_SERVED = "lipsync_frames_processed_total"


def _requests(video: bytes, audio: bytes, pace_s: float):
    yield lipsync_pb2.LipsyncRequest(config=lipsync_pb2.LipsyncConfig(input_audio_codec=audio_pb2.AUDIO_CODEC_WAV))
    v = [video[i:i + CHUNK] for i in range(0, len(video), CHUNK)]
    a = [audio[i:i + CHUNK] for i in range(0, len(audio), CHUNK)]
    for i in range(max(len(v), len(a))):
        if i < len(v):
            yield lipsync_pb2.LipsyncRequest(input=lipsync_pb2.LipsyncInputData(video_file_data=v[i]))
        if i < len(a):
            yield lipsync_pb2.LipsyncRequest(input=lipsync_pb2.LipsyncInputData(audio_file_data=a[i]))
        time.sleep(pace_s)


def _client(target: str, video: bytes, audio: bytes, pace_s: float) -> dict:
    t0 = time.monotonic()
    first = None
    size = 0
    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        stub = lipsync_pb2_grpc.LipSyncServiceStub(channel)
        try:
            for r in stub.Lipsync(_requests(video, audio, pace_s), timeout=600):
                if r.WhichOneof("lipsync_response") == "video_file_data":
                    first = first or time.monotonic()
                    size += len(r.video_file_data)
        except grpc.RpcError as err:
            return {"outcome": err.code().name, "message": err.details(), "seconds": time.monotonic() - t0}
    return {"outcome": "OK", "seconds": time.monotonic() - t0, "first_chunk_s": first - t0 if first else None,
            "bytes": size}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=2, help="NV_AI4M_MAX_CONCURRENCY_PER_GPU")
    parser.add_argument("--queue", type=int, default=2, help="NV_AI4M_MAX_QUEUED_STREAMS")
    parser.add_argument("--clients", type=int, default=None, help="calls at once (default 4 x slots)")
    parser.add_argument("--processor", default="passthrough", choices=("passthrough", "neural"))
    parser.add_argument("--pace", type=float, default=0.01, help="seconds between upload chunk pairs")
    args = parser.parse_args()
    clients = args.clients or 4 * args.slots

    clip = _media.shared("face_static_720p_streamable.mp4")
    with tempfile.TemporaryDirectory() as tmp:
        speech = _media.speech_wav(Path(tmp) / "speech.wav", seconds=8.0)
        video, audio = clip.read_bytes(), Path(speech).read_bytes()
        env = {"NV_AI4M_LS_PROCESSOR": args.processor, "NV_AI4M_MAX_CONCURRENCY_PER_GPU": str(args.slots),
               "NV_AI4M_MAX_QUEUED_STREAMS": str(args.queue), "NV_AI4M_ADMISSION_TIMEOUT_S": "600",
               "NIM_LOG_LEVEL": "WARNING"}
        with ServerProcess(env) as server:
            base_rss = server.peak_rss_mib()
            frames_before = server.metric(FRAMES_SERVED)
            t0 = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                results = list(pool.map(lambda _: _client(server.target, video, audio, args.pace), range(clients)))
            wall = time.monotonic() - t0
            peak = server.peak_rss_mib()
            frames = server.metric(FRAMES_SERVED) - frames_before

    ok = [r for r in results if r["outcome"] == "OK"]
    refused = [r for r in results if r["outcome"] == "RESOURCE_EXHAUSTED"]
    other = [r for r in results if r["outcome"] not in ("OK", "RESOURCE_EXHAUSTED")]
    summary = {
        "processor": args.processor, "slots": args.slots, "queue": args.queue, "clients": clients,
        "ok": len(ok), "refused": len(refused), "other": [r["outcome"] + ": " + r["message"] for r in other],
        "wall_s": round(wall, 2),
        "frames": int(frames),
        "aggregate_fps": round(frames / wall, 1),
        "first_chunk_s_median": round(statistics.median(r["first_chunk_s"] for r in ok), 2) if ok else None,
        "server_rss_idle_mib": round(base_rss, 1), "server_rss_peak_mib": round(peak, 1),
    }
    print(json.dumps(summary, indent=2))
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "bench_load.json").write_text(json.dumps(summary, indent=2))
    return 0 if not other else 1


if __name__ == "__main__":
    sys.exit(main())
