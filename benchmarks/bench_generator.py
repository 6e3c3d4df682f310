"""Generator throughput: frames/s at batch 1, 8 and 32, embedded ONNX Runtime against the local Triton.

Both run the same committed model (triton_repo/<model>/<latest>/model.onnx; --model, default the default
lip_shape model; opening_warp_rgb96 is the previous rgb_face generator) with the same
number of ONNX Runtime intra-op threads; Triton is the nvidia-pytriton wheel's tritonserver (Python
backend) on loopback, so the ratio is the cost of the gRPC hop, serialisation and Triton's scheduling.
The two backends are called alternately, call by call, and the median call time gives frames/s, so that
load from other processes on a shared machine hits both alike.
"triton" uses system shared memory for the tensors (same host); "triton_no_shm" sends them in the gRPC
messages, as a remote server needs. Also measured: several client threads sending batch 8 at once
through Triton (its dynamic batcher).

Usage: python benchmarks/bench_generator.py [--model NAME] [--seconds S] [--threads T]
Writes benchmarks/results/bench_generator.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np

from lipsync_service.inference.local_triton import LocalTriton
from lipsync_service.inference.onnxruntime import OnnxRuntimeBackend
from lipsync_service.inference.triton import TritonBackend
from lipsync_service.settings import DEFAULT_MODEL_REPOSITORY

BATCHES = (1, 8, 32)
DEFAULT_MODEL = "lipsync_generator"
RESULTS = Path(__file__).resolve().parent / "results"


def _inputs(batch: int, size: int) -> tuple[np.ndarray | None, np.ndarray]:
    """A batch for the model's contract: no face input for a lip_shape model (face size 0)."""
    rng = np.random.default_rng(batch)
    mel = rng.normal(size=(batch, 1, 80, 16)).astype(np.float32)
    if size == 0:
        return None, mel
    face = rng.random((batch, 6, size, size), dtype=np.float32)
    face[:, :3, size // 2 :] = 0.0
    return face, mel


def _call_times(backends: dict, batch: int, seconds: float, min_calls: int = 5) -> dict[str, list[float]]:
    """Seconds per call of each backend, called in turn until `seconds` per backend have passed."""
    size = next(iter(backends.values())).spec.face_size
    face, mel = _inputs(batch, size)
    for backend in backends.values():
        backend.infer(face, mel)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in backends}
    while min(sum(t) for t in times.values()) < seconds or min(len(t) for t in times.values()) < min_calls:
        for name, backend in backends.items():
            start = time.perf_counter()
            backend.infer(face, mel)
            times[name].append(time.perf_counter() - start)
    return times


def _concurrent_fps(url: str, model: str, threads: int, batch: int, seconds: float) -> float:
    backend = TritonBackend(url, model, max_batch_size=32)
    face, mel = _inputs(batch, backend.spec.face_size)
    backend.infer(face, mel)
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def worker(i: int) -> None:
        while time.perf_counter() < stop:
            backend.infer(face, mel)
            counts[i] += batch

    start = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    backend.close()
    return sum(counts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model in the repository (default {DEFAULT_MODEL})")
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time per backend and batch")
    parser.add_argument("--threads", type=int, default=4, help="client threads for the concurrent Triton case")
    args = parser.parse_args()

    threads = os.cpu_count() or 1
    embedded = OnnxRuntimeBackend.from_repository(
        DEFAULT_MODEL_REPOSITORY, args.model, max_batch_size=max(BATCHES), intra_op_threads=threads
    )
    results: dict[str, dict] = {}
    with LocalTriton(DEFAULT_MODEL_REPOSITORY) as server:
        remote = TritonBackend(server.url, args.model, max_batch_size=max(BATCHES), shm="on")
        plain = TritonBackend(server.url, args.model, max_batch_size=max(BATCHES), shm="off")
        backends = {"embedded_ort": embedded, "triton": remote, "triton_no_shm": plain}
        samples = {batch: _call_times(backends, batch, args.seconds) for batch in BATCHES}
        concurrent = _concurrent_fps(server.url, args.model, args.threads, 8, args.seconds * 2)
        remote.close()
        plain.close()
    embedded.close()

    size = embedded.spec.face_size
    print(f"generator {args.model} (S={size}), {threads} CPU threads, alternating calls, median call time")
    print(
        f"{'batch':>5} | {'embedded ORT fps':>16} | {'Triton fps':>10} | {'Triton time / embedded time':>27} | "
        f"{'Triton no-shm fps':>17} | {'no-shm time / embedded':>22}"
    )
    for batch in BATCHES:
        ort_fps = batch / float(np.median(samples[batch]["embedded_ort"]))
        tri_fps = batch / float(np.median(samples[batch]["triton"]))
        ratio = ort_fps / tri_fps
        plain_fps = batch / float(np.median(samples[batch]["triton_no_shm"]))
        results[str(batch)] = {
            "embedded_ort_fps": ort_fps,
            "triton_fps": tri_fps,
            "triton_overhead_ratio": ratio,
            "triton_no_shm_fps": plain_fps,
            "triton_no_shm_overhead_ratio": ort_fps / plain_fps,
            "calls": len(samples[batch]["triton"]),
        }
        print(
            f"{batch:>5} | {ort_fps:>16.1f} | {tri_fps:>10.1f} | {ratio:>27.2f} | "
            f"{plain_fps:>17.1f} | {ort_fps / plain_fps:>22.2f}"
        )
    print(f"Triton, {args.threads} client threads x batch 8 at once: {concurrent:.1f} fps")
    verdict = "met" if results["8"]["triton_overhead_ratio"] <= 1.25 else "NOT met"
    print(f"target Triton/embedded <= 1.25x at batch 8: {verdict}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {
        "model": args.model,
        "face_size": embedded.spec.face_size,
        "cpu_threads": threads,
        "machine": platform.platform(),
        "seconds": args.seconds,
        "batches": results,
        "triton_concurrent": {"threads": args.threads, "batch": 8, "fps": concurrent},
    }
    out = RESULTS / "bench_generator.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
