"""Issue 19 soak: an hour of mixed load at 4x the concurrency limit against the real server process.

Starts `python -m lipsync_service serve` (its defaults: the neural processor, 2 slots, 8 queued) and keeps
`--clients` calls in flight (default 4 x the slots) for `--minutes`: valid calls, hostile ones (corrupt media, bad
configs and speaker data), clients that cancel mid-upload or mid-download or never read, slow readers (stop
reading for seconds) and slow writers (a byte a second for a few seconds) -- tests/fuzzing/cases.py SOAK_MIX on
the fuzz corpus. Samples the server's RSS, threads and fds and the machine's load every 5 s, and the time of each
call; writes per-window figures (p50/p99 seconds of valid calls, outcomes), a drift check (first vs last 10
minutes), the server's RSS, threads and fds once idle afterwards against the warm baseline, a JSON and a PNG plot.

Usage: python benchmarks/soak.py [--minutes 60] [--clients 8] [--processor neural] [--nice 5]
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _plot  # noqa: E402

from tests.fuzzing import corpus as fuzz_corpus  # noqa: E402
from tests.fuzzing.cases import soak_case, warm_up_case  # noqa: E402
from tests.fuzzing.driver import channel_for, run_case  # noqa: E402
from tests.server_process import Sampler, ServerProcess, load_average, quiet_sample, scan_log  # noqa: E402

MEDIA_DIR = (ROOT.parent / "shared" / "media").resolve()
STOP = threading.Event()  # set by SIGTERM
WARM_UP_CALLS = 12
EDGE_S = 600  # the first and last 10 minutes, compared for drift
THREADS_BACK_S = 60


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


def _threads_back(server: ServerProcess, baseline: int, names: collections.Counter) -> dict:
    """Give the thread count up to THREADS_BACK_S to return to the baseline (gRPC's event-engine pool shrinks by
    itself, some seconds after the load ends); the seconds it took and the names of any threads left over."""
    start = time.monotonic()
    while server.threads() > baseline and time.monotonic() - start < THREADS_BACK_S:
        time.sleep(1)
    extra = server.thread_names() - names
    return {"threads": server.threads(), "threads_back_s": round(time.monotonic() - start, 1),
            "extra_threads": dict(extra)}


def main() -> int:  # noqa: C901 - one linear run
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--slots", type=int, default=2, help="NV_AI4M_MAX_CONCURRENCY_PER_GPU")
    parser.add_argument("--clients", type=int, default=None, help="calls in flight (default 4 x slots)")
    parser.add_argument("--processor", default="neural", choices=("neural", "passthrough"))
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--window-s", type=float, default=300, help="seconds per figure window")
    parser.add_argument("--nice", type=int, default=0, help="niceness added to the server (a shared machine)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak.json")
    args = parser.parse_args()
    clients = args.clients or 4 * args.slots
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log_path = args.out.with_suffix(".server.log")
    log_path.unlink(missing_ok=True)
    env = {"NV_AI4M_LS_PROCESSOR": args.processor, "NV_AI4M_MAX_CONCURRENCY_PER_GPU": str(args.slots)}

    records: list[dict] = []
    lock = threading.Lock()
    counter = itertools.count()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = fuzz_corpus.build(Path(tmp), MEDIA_DIR)
        server = ServerProcess(env, log=log_path, nice=args.nice).start()
        try:
            for i in range(WARM_UP_CALLS):
                with channel_for(server.target) as channel:
                    run_case(channel, warm_up_case(corpus, i))
            baseline = quiet_sample(server)
            baseline_names = server.thread_names()
            print(f"warm baseline: {baseline}; {clients} clients for {args.minutes:g} min", flush=True)
            sampler = Sampler(server)
            t0 = sampler.t0
            end = t0 + args.minutes * 60
            sampler.start()

            def worker() -> None:
                while time.monotonic() < end and server.alive and not STOP.is_set():
                    index = next(counter)
                    kind, case = soak_case(corpus, args.seed, index)
                    start = time.monotonic()
                    with channel_for(server.target) as channel:
                        outcome = run_case(channel, case)
                    with lock:
                        records.append({"t": round(start - t0, 2), "kind": kind, "index": index,
                                        "code": outcome.code.name, "seconds": round(outcome.seconds, 3),
                                        "problem": outcome.problem})
                    if outcome.problem:
                        print(f"FAIL #{index} [{kind}] {case.detail[:200]} -> {outcome.problem}", flush=True)

            threads = [threading.Thread(target=worker, name=f"soak-{k}") for k in range(clients)]
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                time.sleep(30)
                with lock:
                    done = len(records)
                if server.alive:
                    print(f"{(time.monotonic() - t0) / 60:.1f} min: {done} calls, RSS {server.rss_mib():.0f} MiB, "
                          f"threads {server.threads()}, fds {server.fds()}, load {load_average():.1f}", flush=True)
            for t in threads:
                t.join()
            sampler.stopped.set()
            alive = server.alive
            after = quiet_sample(server) if alive else {}
            if alive:
                after.update(_threads_back(server, baseline["threads"], baseline_names))
            peak = server.peak_rss_mib() if alive else float("nan")
        finally:
            status = server.stop()

    windows = []
    span = args.minutes * 60
    for w0 in range(0, int(span), int(args.window_s)):
        rows = [r for r in records if w0 <= r["t"] < w0 + args.window_s]
        valid = [r["seconds"] for r in rows if r["kind"] == "valid" and r["code"] == "OK"]
        samples = [s for s in sampler.series if w0 <= s["t"] < w0 + args.window_s]
        windows.append({"minute": w0 / 60, "calls": len(rows), "valid_ok": len(valid),
                         "p50_s": _pct(valid, 0.5), "p99_s": _pct(valid, 0.99),
                         "rss_mib": round(statistics.median(s["rss_mib"] for s in samples), 1) if samples else None,
                         "threads_max": max((s["threads"] for s in samples), default=None),
                         "fds_max": max((s["fds"] for s in samples), default=None),
                         "load": round(statistics.mean(s["load"] for s in samples), 2) if samples else None,
                         "outcomes": dict(collections.Counter(r["code"] for r in rows))})

    def edge(first: bool) -> dict:
        rows = [r for r in records if (r["t"] < EDGE_S if first else r["t"] >= span - EDGE_S)]
        valid = [r["seconds"] for r in rows if r["kind"] == "valid" and r["code"] == "OK"]
        samples = [s for s in sampler.series if (s["t"] < EDGE_S if first else s["t"] >= span - EDGE_S)]
        return {"valid_calls": len(valid), "p50_s": _pct(valid, 0.5), "p99_s": _pct(valid, 0.99),
                "rss_mib_median": round(statistics.median(s["rss_mib"] for s in samples), 1) if samples else None,
                "load_mean": round(statistics.mean(s["load"] for s in samples), 2) if samples else None}

    failures = [r for r in records if r["problem"]]
    by_kind = {k: dict(collections.Counter(r["code"] for r in records if r["kind"] == k))
               for k in sorted({r["kind"] for r in records})}
    summary = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "minutes": args.minutes,
        "clients": clients, "slots": args.slots, "processor": args.processor, "calls": len(records),
        "failures": len(failures), "failed": failures[:50], "server_alive_at_end": alive,
        "server_exit_status": status, "by_kind": by_kind, "baseline": baseline, "after": after,
        "peak_rss_mib": round(peak, 1), "first_10_min": edge(True), "last_10_min": edge(False),
        "windows": windows, "server_log": {k: v for k, v in scan_log(log_path).items() if k != "first_traceback"},
        "series": sampler.series,
    }
    args.out.write_text(json.dumps(summary, indent=1))

    minutes = [s["t"] / 60 for s in sampler.series]
    mids = [w["minute"] + args.window_s / 120 for w in windows]
    _plot.draw([
        _plot.Panel("server memory", "MiB", [_plot.Series("RSS", minutes, [s["rss_mib"] for s in sampler.series])]),
        _plot.Panel("server threads and open files", "count", [
            _plot.Series("threads", minutes, [s["threads"] for s in sampler.series], "orange"),
            _plot.Series("fds", minutes, [s["fds"] for s in sampler.series], "green")]),
        _plot.Panel(f"time per valid call, per {args.window_s / 60:g} min", "s", [
            _plot.Series("p50", mids, [w["p50_s"] if w["p50_s"] is not None else float("nan") for w in windows]),
            _plot.Series("p99", mids, [w["p99_s"] if w["p99_s"] is not None else float("nan") for w in windows],
                         "red")]),
        _plot.Panel("machine load (2 cores, shared)", "1-min load average",
                    [_plot.Series("load", minutes, [s["load"] for s in sampler.series], "grey")]),
    ], "minutes", args.out.with_suffix(".png"),
        f"soak: {clients} clients at {args.slots} slots ({args.processor}), {len(records)} calls, "
        f"{len(failures)} failures")
    brief = {k: v for k, v in summary.items() if k not in ("series", "windows", "failed")}
    print(json.dumps(brief, indent=1))
    ok = not failures and alive and status == 0 and after.get("threads", 1e9) <= baseline["threads"] \
        and after.get("fds", 1e9) <= baseline["fds"]
    print(f"{'PASS' if ok else 'FAIL'}: {len(records)} calls in {args.minutes:g} min, {len(failures)} failures; RSS "
          f"{baseline['rss_mib']} -> {after.get('rss_mib')} MiB after, threads {baseline['threads']} -> "
          f"{after.get('threads')}, fds {baseline['fds']} -> {after.get('fds')}; {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    # A SIGTERM stops the run: no new call starts, and the server process is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: (STOP.set(), sys.exit(143)))
    sys.exit(main())
