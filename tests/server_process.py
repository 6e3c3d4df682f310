"""The real `python -m lipsync_service serve` process, for benchmarks and the tests that need a process of its own
(signals, a mount namespace): start on free ports, wait until ready, read its memory, threads and open files from
/proc and its counters from /v1/metrics, stop it."""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO

SETTLE_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_average() -> float:
    """The machine's 1-minute load average (the benchmarks run on a shared machine)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


class ServerProcess:
    """One service process on free loopback ports.

    Args:
        env: settings for it (NV_AI4M_*, NIM_*), on top of this process's environment.
        log: where its stderr goes (a file keeps the log for a later scan); None: inherited.
        nice: niceness added to the server's (the shared machine's other users keep their share).
        wrap: a command the server runs under (e.g. unshare and a mount), given the server's command to run.
    """

    def __init__(self, env: dict[str, str] | None = None, log: Path | None = None, nice: int = 0,
                 wrap: list[str] | None = None) -> None:
        self.grpc_port, self.http_port = free_port(), free_port()
        self._env = dict(os.environ, NIM_HOST="127.0.0.1", NIM_GRPC_API_PORT=str(self.grpc_port),
                         NIM_HTTP_API_PORT=str(self.http_port), **(env or {}))
        self._log_path = log
        self._log: IO[bytes] | None = None
        self._nice = nice
        self._wrap = wrap or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 180) -> ServerProcess:
        """Start it and wait until /v1/health/ready answers 200.

        Raises:
            RuntimeError: it exited or did not become ready in time.
        """
        if self._log_path is not None:
            self._log = open(self._log_path, "ab")  # noqa: SIM115 - closed by stop()
        nice = self._nice
        self.proc = subprocess.Popen([*self._wrap, sys.executable, "-m", "lipsync_service", "serve"], env=self._env,
                                     stderr=self._log, preexec_fn=(lambda: os.nice(nice)) if nice else None)
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not become ready (exit status {self.proc.poll()})")
            time.sleep(0.2)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v1/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _status(self, key: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
        return float("nan")

    def rss_mib(self) -> float:
        """Resident memory now."""
        return self._status("VmRSS") / 1024

    def peak_rss_mib(self) -> float:
        """The highest resident memory so far (VmHWM)."""
        return self._status("VmHWM") / 1024

    def threads(self) -> int:
        return int(self._status("Threads"))

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def thread_names(self) -> collections.Counter[str]:
        """The server's threads by name (gRPC's own pools, e.g. event_engine, grow and shrink by themselves)."""
        names: collections.Counter[str] = collections.Counter()
        for task in os.listdir(f"/proc/{self.pid}/task"):
            try:
                names[Path(f"/proc/{self.pid}/task/{task}/comm").read_text().strip()] += 1
            except OSError:  # the thread ended while being listed
                continue
        return names

    def metrics(self) -> dict[str, float]:
        """Every sample of /v1/metrics, by its name with labels as printed."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v1/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
        return out

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 90) -> int | None:
        """Signal it and wait for its exit status (killed if it does not exit in time)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return proc.returncode if proc is not None else None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Sampler(threading.Thread):
    """Samples the server's RSS, threads and fds and the machine's load every `period_s` into `series`
    (`t`: seconds since the sampler was made)."""

    def __init__(self, server: ServerProcess, period_s: float = 5.0) -> None:
        super().__init__(name="sampler", daemon=True)
        self.server, self.period_s = server, period_s
        self.series: list[dict[str, float]] = []
        self.stopped = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.stopped.wait(self.period_s):
            if not self.server.alive:
                return
            try:
                self.series.append({"t": round(time.monotonic() - self.t0, 1),
                                    "rss_mib": round(self.server.rss_mib(), 1), "threads": self.server.threads(),
                                    "fds": self.server.fds(), "load": load_average()})
            except OSError:
                return


def quiet_sample(server: ServerProcess, settle_s: float = SETTLE_S, timeout_s: float = 120) -> dict[str, float]:
    """RSS, threads and fds once no stream is active or queued, `settle_s` later."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m = server.metrics()
        if not m.get("lipsync_streams_active") and not m.get("lipsync_streams_queued"):
            break
        time.sleep(0.5)
    time.sleep(settle_s)
    return {"rss_mib": round(server.rss_mib(), 1), "threads": server.threads(), "fds": server.fds(),
            "load": load_average()}


def scan_log(path: Path) -> dict[str, object]:
    """Tracebacks, PyAV's dropped-exception dumps, ERROR lines and request_finished outcomes in the server log."""
    text = path.read_text(errors="replace") if path.exists() else ""
    outcomes: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        if '"event": "request_finished"' in line:
            try:
                outcomes[json.loads(line[line.index("{"):])["outcome"]] += 1
            except (ValueError, KeyError):
                outcomes["unparsed"] += 1
    lines = text.splitlines()
    return {"tracebacks": text.count("Traceback (most recent call last)"),
            "pyav_dropped": text.count("PyAV library exception being dropped"),
            "error_lines": sum(1 for line in lines if " ERROR " in line),
            "lines": len(lines), "request_finished": dict(outcomes),
            "first_traceback": text[text.find("Traceback"):][:3000] if "Traceback" in text else ""}
