"""End-to-end lip-sync throughput on the 720p clip, per stage, against a plain decode-and-encode baseline.

Runs the offline pipeline (lipsync_service.pipeline.run_files) with the neural processor and the embedded
ONNX Runtime backend on ../shared/media/face_static_720p_streamable.mp4 with speech_16k_12s.wav, and in the
same run a plain PyAV decode-and-encode of the same clip with the service's default x264 settings.
Prints a table and writes benchmarks/results/bench_pipeline.json. The headline is the median over pairs of
runs of (lip-sync frames/s) / (plain frames/s).

Usage: python benchmarks/bench_pipeline.py [--video NAME] [--audio NAME] [--repeat N] [--speed {0,1}]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lipsync_service  # noqa: F401 - first, as in the CLI: it limits OpenBLAS's threads before numpy loads

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _media  # noqa: E402
from _baseline import plain_decode_encode  # noqa: E402

from lipsync_service.core.neural import build_neural_processor as build_processor  # noqa: E402
from lipsync_service.job import JobConfig  # noqa: E402
from lipsync_service.pipeline import run_files  # noqa: E402
from lipsync_service.settings import Settings  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def lipsync_run(video: Path, audio: Path, out: Path, speed: int) -> dict:
    """One offline job with the neural processor; wall time and per-stage seconds."""
    settings = Settings()
    cfg = dataclasses.replace(JobConfig(), head_movement_speed=speed)
    t0 = time.perf_counter()
    processor = build_processor(settings)
    build_s = time.perf_counter() - t0
    start = time.perf_counter()
    result = run_files(cfg, settings, processor, video, audio, out)
    wall = time.perf_counter() - start
    core = dict(processor.stage_seconds)
    job = dict(result.stage_seconds)
    stages = {
        "decode": job.get("decode", 0.0),
        "shots": core["shots"],
        "detect": core["detect"],
        "landmarks": core["landmarks"],
        "occlusion": core["occlusion"],
        "speaker choice": core["speaker"],
        "features": core["features"],
        "generator": core["generator"],
        "encode_wait": job.get("encode_wait", 0.0),
    }
    # What the job thread spent outside these stages (tracking, queueing, copies).
    stages["other"] = max(0.0, wall - sum(stages.values()))
    # The finishing and encode threads' busy times overlap the stages above: reported beside them, not summed.
    stages["blend (own thread)"] = core["blend"] + core["overlay"]
    stages["encode (own thread)"] = job.get("encode", 0.0)
    return {"frames": result.frames, "wall_s": wall, "build_s": build_s, "stages_s": stages,
            "model_info": processor.model_info}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", default="face_static_720p_streamable.mp4")
    parser.add_argument("--audio", default="speech_16k_12s.wav")
    parser.add_argument("--repeat", type=int, default=1,
                        help="pairs of runs (plain, then lip-sync); the median ratio of a pair and the fastest "
                             "run of each are reported")
    parser.add_argument("--speed", type=int, default=0, choices=(0, 1), help="head_movement_speed")
    args = parser.parse_args()
    video, audio = _media.shared(args.video), _media.shared(args.audio)
    # Plain and lip-sync runs alternate, so that a change in the machine's load (it is shared) hits both sides
    # of a pair alike; each pair gives one ratio.
    bases, runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            bases.append(plain_decode_encode(video, Path(tmp) / "plain.mp4", audio))
            runs.append(lipsync_run(video, audio, Path(tmp) / "lipsync.mp4", args.speed))
    ratios = sorted((r["frames"] / r["wall_s"]) / (b[0] / b[1]) for b, r in zip(bases, runs))
    median_ratio = statistics.median(ratios)
    base = min(bases, key=lambda r: r[1])
    best = min(runs, key=lambda r: r["wall_s"])
    fps = best["frames"] / best["wall_s"]
    base_fps = base[0] / base[1]
    print(f"clip {args.video} + {args.audio}, head_movement_speed {args.speed}, model: {best['model_info']}")
    print(f"{'run':<28}{'frames':>8}{'seconds':>10}{'frames/s':>10}")
    print(f"{'plain decode+encode':<28}{base[0]:>8}{base[1]:>10.2f}{base_fps:>10.1f}")
    print(f"{'lip-sync end to end':<28}{best['frames']:>8}{best['wall_s']:>10.2f}{fps:>10.1f}")
    print(f"ratio lip-sync / plain: median of {len(ratios)} pairs {median_ratio:.3f} "
          f"(pairs {', '.join(f'{r:.3f}' for r in ratios)}); fastest runs {fps / base_fps:.3f}")
    print("per stage (seconds, ms/frame, share of wall):")
    for name, sec in best["stages_s"].items():
        print(f"  {name:<20}{sec:>8.2f}{1000 * sec / max(1, best['frames']):>10.1f}{100 * sec / best['wall_s']:>8.1f}%")
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {"video": args.video, "audio": args.audio, "head_movement_speed": args.speed,
              "plain": {"frames": base[0], "seconds": base[1], "fps": base_fps},
              "lipsync": {**best, "fps": fps}, "ratio": median_ratio, "pair_ratios": ratios,
              "ratio_of_fastest": fps / base_fps}
    (RESULTS / "bench_pipeline.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS / 'bench_pipeline.json'}")


if __name__ == "__main__":
    main()
