"""The real `python -m lipsync_service serve` process, for benchmarks and the tests that need a process of its own
(signals, a mount namespace): start on free ports, wait until ready, read its memory, threads and open files from
/proc and its counters from /v1/metrics, stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO


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
