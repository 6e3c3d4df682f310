"""Issue 19 faults on purpose, measured: SIGTERM under load, clients killed mid-upload and mid-download, the spool's
disk full, and Triton killed and restarted under load (tests/faults.py has each scenario; the tests assert on
them, this prints their figures).

Usage: python benchmarks/bench_faults.py [--repeat 5] [--only sigterm,vanish,disk,triton]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests import faults  # noqa: E402
from tests.functional.helpers import ServerThread, running_server, server_settings  # noqa: E402
from tests.server_process import load_average  # noqa: E402

SCENARIOS = ("sigterm", "vanish", "disk", "triton")


def _triton(tmp: Path) -> dict:
    from lipsync_service.errors import InferenceUnavailable
    from lipsync_service.inference.local_triton import LocalTriton

    try:
        triton = LocalTriton(faults.TRITON_REPO).start(timeout_s=180)
    except InferenceUnavailable as exc:
        return {"skipped": f"tritonserver cannot run here: {exc}"}
    try:
        # 8 clients at 2 slots, every frame through the generator (the RGB model, as test_triton_faults.py).
        settings = server_settings(processor="neural", backend="triton", triton_url=triton.url,
                                   model_repository=faults.TRITON_REPO, model_name="opening_warp_rgb96",
                                   triton_timeout_s=10, max_concurrency_per_gpu=2, max_queued_streams=8,
                                   admission_timeout_s=120, input_queue_timeout_s=30)
        srv = ServerThread(settings).start()
        try:
            return faults.triton_killed_under_load(triton, srv, faults.triton_clip(tmp), clients=8)
        finally:
            srv.stop()
    finally:
        triton.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of the client-killed scenario per phase")
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_faults.json")
    args = parser.parse_args()
    wanted = [s for s in args.only.split(",") if s]
    out: dict[str, object] = {"load_before": load_average()}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        clip = faults.clips(tmp)
        if "sigterm" in wanted:
            out["sigterm"] = faults.sigterm_under_load(clip, slots=2, clients=8)
            print("sigterm:", json.dumps(out["sigterm"]), flush=True)
        if "vanish" in wanted:
            vanish: dict[str, object] = {}
            with running_server(keepalive_interval_s=0.5, output_stall_timeout_s=60) as srv:
                for phase in ("upload", "download"):
                    runs = [faults.client_killed(srv, clip, phase, tmp) for _ in range(args.repeat)]
                    freed = [r["freed_s"] for r in runs]
                    vanish[phase] = {"runs": len(runs), "all_held_a_slot": all(r["held_a_slot"] for r in runs),
                                     "freed_s_median": statistics.median(freed), "freed_s_max": max(freed)}
                codes = {s.labels["code"]: s.value for m in srv.metrics.registry.collect()
                         if m.name == "lipsync_streams" for s in m.samples if s.name == "lipsync_streams_total"}
                vanish["server_outcomes"] = codes
            out["vanish"] = vanish
            print("vanish:", json.dumps(vanish), flush=True)
        if "disk" in wanted:
            out["disk"] = (faults.spool_disk_full(clip, tmp / "spool", size_kib=64) if faults.can_mount_tmpfs()
                           else {"skipped": "no mount namespace (unshare -rm) here"})
            print("disk:", json.dumps(out["disk"]), flush=True)
        if "triton" in wanted:
            out["triton"] = _triton(tmp)
            print("triton:", json.dumps(out["triton"]), flush=True)
    out["load_after"] = load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
