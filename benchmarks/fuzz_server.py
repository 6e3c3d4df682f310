"""Issue 19 fuzz campaign: thousands of hostile Lipsync calls against the real server process, every outcome judged,
and the server's memory, threads and open files compared with its warm baseline afterwards.

Starts `python -m lipsync_service serve` (its defaults: the neural processor, 2 slots; `--processor passthrough`
for a faster run), builds the corpus (a 1 s 256x256 talking face in three MP4 layouts, WAV and MP3 speech) and
runs `--cases` seeded cases (tests/fuzzing/cases.py) `--concurrency` at a time, in `--rounds` rounds. Before the
first round it runs valid calls and takes the warm baseline; after each round it waits until no stream is
active, lets the server settle, and samples RSS, threads and fds again. The server's log is scanned for
tracebacks afterwards. Exit status 1 when any case failed, the server died, or RSS, threads or fds did not come
back (RSS within --rss-factor of the baseline).

Usage: python benchmarks/fuzz_server.py --cases 10000 --seed 19 [--concurrency 3] [--time-limit 14400]
       python benchmarks/fuzz_server.py --seed 19 --only 4711          # replay one case
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.fuzzing import corpus as fuzz_corpus  # noqa: E402
from tests.fuzzing.cases import make_case, warm_up_case  # noqa: E402
from tests.fuzzing.driver import Outcome, channel_for, run_case  # noqa: E402
from tests.server_process import Sampler, ServerProcess, load_average, quiet_sample, scan_log  # noqa: E402

MEDIA_DIR = (ROOT.parent / "shared" / "media").resolve()
STOP = threading.Event()  # set by SIGTERM
WARM_UP_CALLS = 12


def main() -> int:  # noqa: C901 - one linear campaign
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--first", type=int, default=0, help="index of the first case")
    parser.add_argument("--only", default="", help="comma-separated case indices to replay alone")
    parser.add_argument("--concurrency", type=int, default=3, help="calls at once")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (a quiet sample after each)")
    parser.add_argument("--processor", default="neural", choices=("neural", "passthrough"))
    parser.add_argument("--time-limit", type=float, default=4 * 3600, help="seconds; no new case starts after it")
    parser.add_argument("--rss-factor", type=float, default=1.3, help="RSS after the run within this x baseline")
    parser.add_argument("--nice", type=int, default=0, help="niceness added to the server (a shared machine)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fuzz_server.json")
    args = parser.parse_args()

    indices = ([int(i) for i in args.only.split(",") if i.strip()] if args.only
               else list(range(args.first, args.first + args.cases)))
    rounds = [r for r in (indices[k::max(1, args.rounds)] for k in range(max(1, args.rounds))) if r]
    rounds = [sorted(r) for r in rounds]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log_path = args.out.with_suffix(".server.log")
    log_path.unlink(missing_ok=True)
    env = {"NV_AI4M_LS_PROCESSOR": args.processor, "NIM_LOG_LEVEL": "INFO"}
    env.update(kv.split("=", 1) for kv in args.env)

    with tempfile.TemporaryDirectory() as tmp:
        corpus = fuzz_corpus.build(Path(tmp), MEDIA_DIR)
        print(f"corpus: {corpus.frames} frames {fuzz_corpus.SIDE}x{fuzz_corpus.SIDE}, face box {corpus.face_box}, "
              f"real face {corpus.real_face}", flush=True)
        server = ServerProcess(env, log=log_path, nice=args.nice).start()
        sampler = Sampler(server)
        failures: list[Outcome] = []
        by_family: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        seconds: list[float] = []
        deaths = 0
        started = time.monotonic()
        ran = 0
        load_before = load_average()
        try:
            for i in range(WARM_UP_CALLS):
                with channel_for(server.target) as channel:
                    warm = run_case(channel, warm_up_case(corpus, i))
                if warm.problem:
                    print(f"warm-up call {i} failed: {warm.problem}", flush=True)
            baseline = quiet_sample(server)
            print(f"warm baseline: {baseline}", flush=True)
            sampler.start()
            samples = [dict(baseline, after_cases=0)]
            lock = threading.Lock()

            def one(index: int) -> None:
                nonlocal ran
                if time.monotonic() - started > args.time_limit or not server.alive or STOP.is_set():
                    return
                case = make_case(corpus, args.seed, index)
                with channel_for(server.target) as channel:
                    try:
                        outcome = run_case(channel, case)
                    except grpc.RpcError as err:  # the driver's own call setup failed
                        outcome = Outcome(case, err.code(), err.details() or "", 0.0, problem=f"driver: {err}")
                with lock:
                    ran += 1
                    seconds.append(outcome.seconds)
                    by_family[case.family][outcome.code.name] += 1
                    if outcome.problem:
                        failures.append(outcome)
                        print(f"FAIL #{index} [{case.family}] {case.detail[:300]}\n  -> {outcome.problem}", flush=True)
                    if ran % 100 == 0:
                        print(f"{ran} cases, {len(failures)} failures, {time.monotonic() - started:.0f} s, "
                              f"RSS {server.rss_mib():.0f} MiB, load {load_average():.1f}", flush=True)

            for number, round_indices in enumerate(rounds, 1):
                with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
                    for future in [pool.submit(one, i) for i in round_indices]:
                        future.result()
                if not server.alive:
                    deaths += 1
                    print(f"the server died (exit status {server.proc.poll() if server.proc else None})", flush=True)
                    break
                sample = dict(quiet_sample(server), after_cases=ran)
                samples.append(sample)
                print(f"after round {number} ({ran} cases): {sample}", flush=True)
        finally:
            sampler.stopped.set()
            wall = time.monotonic() - started
            peak = server.peak_rss_mib() if server.alive else float("nan")
            exit_status = server.stop()
        load_after = load_average()

    after = samples[-1]
    rss_ok = after["rss_mib"] <= args.rss_factor * baseline["rss_mib"]
    threads_ok = after["threads"] <= baseline["threads"]
    fds_ok = after["fds"] <= baseline["fds"]
    log = scan_log(log_path)
    seconds.sort()
    summary = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seed": args.seed, "cases_planned": len(indices), "cases_run": ran, "concurrency": args.concurrency,
        "processor": args.processor, "wall_s": round(wall, 1), "time_limit_s": args.time_limit,
        "failures": len(failures), "server_deaths": deaths, "server_exit_status": exit_status,
        "outcomes": dict(sum(by_family.values(), collections.Counter())),
        "by_family": {k: dict(v) for k, v in sorted(by_family.items())},
        "call_seconds": {"median": seconds[len(seconds) // 2] if seconds else None,
                         "p99": seconds[int(len(seconds) * 0.99)] if seconds else None,
                         "max": seconds[-1] if seconds else None},
        "baseline": baseline, "samples": samples, "peak_rss_mib": round(peak, 1),
        "rss_ratio": round(after["rss_mib"] / baseline["rss_mib"], 3), "rss_ok": rss_ok,
        "threads_ok": threads_ok, "fds_ok": fds_ok,
        "load_before": load_before, "load_after": load_after,
        "load_mean": round(sum(s["load"] for s in sampler.series) / len(sampler.series), 2) if sampler.series else None,
        "server_log": log,
        "failed_cases": [{"index": o.case.index, "family": o.case.family, "detail": o.case.detail[:500],
                          "code": o.code.name, "message": o.message[:500], "problem": o.problem[:500],
                          "seconds": round(o.seconds, 2)} for o in failures],
        "series": sampler.series,
    }
    args.out.write_text(json.dumps(summary, indent=1))
    brief = {k: v for k, v in summary.items() if k not in ("series", "failed_cases", "by_family", "samples")}
    brief["server_log"] = {k: v for k, v in log.items() if k != "first_traceback"}
    print(json.dumps(brief, indent=1))
    if log["first_traceback"]:
        print("first traceback in the server log:\n" + str(log["first_traceback"]))
    ok = not failures and not deaths and rss_ok and threads_ok and fds_ok
    print(f"{'PASS' if ok else 'FAIL'}: {ran} cases, {len(failures)} failures, {deaths} server deaths, RSS "
          f"{baseline['rss_mib']} -> {after['rss_mib']} MiB ({summary['rss_ratio']}x), threads "
          f"{baseline['threads']} -> {after['threads']}, fds {baseline['fds']} -> {after['fds']}; "
          f"results in {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    # A SIGTERM stops the run: no new call starts, and the server process is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: (STOP.set(), sys.exit(143)))
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.exit(main())
