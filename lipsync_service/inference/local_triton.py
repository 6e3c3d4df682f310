"""Runs the tritonserver binary shipped in the nvidia-pytriton wheel as a subprocess (tests, benchmarks, laptops).

That build has only the Python backend, so it serves python_onnx models such as the committed
triton_repo/lipsync_generator. Its Python stub is built per Python version and embeds the interpreter
found first on PATH, so this interpreter's bin folder goes first (its site-packages provide numpy and
onnxruntime to model.py), and the wheel's bundled shared libraries go on LD_LIBRARY_PATH.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lipsync_service.errors import InferenceUnavailable


def _pytriton_dir() -> Path:
    try:
        import pytriton
    except ImportError as exc:
        raise InferenceUnavailable("nvidia-pytriton is not installed (pip install '.[triton]')") from exc
    return Path(pytriton.__file__).resolve().parent


def tritonserver_binary() -> Path:
    """The tritonserver executable inside the nvidia-pytriton wheel."""
    return _pytriton_dir() / "tritonserver" / "bin" / "tritonserver"


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _kill_group(pid: int) -> None:
    """SIGKILL what is left of the server's process group (its Python stubs outlive a killed server)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# The Python backend keeps each model instance's tensors in a /dev/shm/triton_python_backend_shm_region_<uuid> file
# that only a server which exits normally removes: a killed one leaves them behind. (The server also maps its
# clients' registered regions, e.g. the Triton backend's lipsync_<pid>_*: those are the clients' to remove.)
_BACKEND_SHM_PREFIX = "/dev/shm/triton_python_backend_shm_region_"


def _mapped_shm(pid: int) -> set[Path]:
    """The Python backend's shared-memory files a server process has mapped (Linux; empty elsewhere or once gone)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    found = set()
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith(_BACKEND_SHM_PREFIX):
            found.add(Path(fields[5].removesuffix(" (deleted)")))
    return found


def _unlink_all(paths: set[Path]) -> None:
    for path in paths:
        try:
            path.unlink()
        except OSError:  # mostly FileNotFoundError: the server removed it itself
            pass


class LocalTriton:
    """A tritonserver subprocess on loopback ports (free ones unless given) serving one model repository.

    Use as a context manager, or call start() and stop(). `url` is the gRPC host:port.
    """

    def __init__(self, model_repository: Path | str, log_path: Path | None = None, *, grpc_port: int | None = None,
                 http_port: int | None = None, metrics_port: int | None = None) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.grpc_port = grpc_port or free_port()
        self.http_port = http_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self._workdir = Path(tempfile.mkdtemp(prefix="lipsync-triton-"))
        self.log_path = log_path or self._workdir / "tritonserver.log"
        self._process: subprocess.Popen | None = None
        self._backends = self._prepare_backends()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _prepare_backends(self) -> Path:
        """A backend folder with the Python backend and the stub for this interpreter's version."""
        base = _pytriton_dir() / "tritonserver"
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        stub = base / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise InferenceUnavailable(f"nvidia-pytriton has no Python backend stub for Python {version}")
        target = self._workdir / "backends" / "python"
        target.mkdir(parents=True)
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copy(base / "backends" / "python" / name, target / name)
        shutil.copy(stub, target / "triton_python_backend_stub")
        return target.parent

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        pytriton_dir = _pytriton_dir()
        # Wheel installs keep the bundled libraries beside the package; editable installs inside it.
        libs = [pytriton_dir.parent / "nvidia_pytriton.libs", pytriton_dir / "tritonserver" / "external_libs"]
        extra = ":".join(str(p) for p in libs if p.is_dir())
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (env.get("LD_LIBRARY_PATH", ""), extra) if p)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        return env

    def start(self, timeout_s: float = 60.0) -> LocalTriton:
        """Launch and wait until the server and every model are ready.

        Raises:
            InferenceUnavailable: the binary is missing, exits, or is not ready in time (log tail included).
        """
        binary = tritonserver_binary()
        if not binary.is_file():
            raise InferenceUnavailable(f"tritonserver binary not found at {binary}")
        args = [
            str(binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self._backends}",
            f"--grpc-port={self.grpc_port}",
            f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}",
            "--grpc-address=127.0.0.1",
            "--http-address=127.0.0.1",
            "--log-verbose=0",
            "--exit-timeout-secs=10",
        ]
        with open(self.log_path, "ab") as log:
            # Own process group: the Python backend's stub processes are stopped with the server.
            self._process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=self._env(), start_new_session=True
            )
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        import tritonclient.grpc as grpcclient

        deadline = time.monotonic() + timeout_s
        client = grpcclient.InferenceServerClient(self.url)
        try:
            while time.monotonic() < deadline:
                if self._process is None or self._process.poll() is not None:
                    raise InferenceUnavailable(f"tritonserver exited during start-up:\n{self.log_tail()}")
                try:
                    if client.is_server_ready(client_timeout=2.0):
                        return
                except Exception:  # not listening yet
                    pass
                time.sleep(0.25)
        finally:
            client.close()
        self.stop()
        raise InferenceUnavailable(f"tritonserver not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def wait(self) -> int:
        """Block until the server exits by itself (or a signal handler raises); returns its exit status."""
        if self._process is None:
            raise InferenceUnavailable("tritonserver is not running")
        return self._process.wait()

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 15 s), leaving none of its shared memory behind."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        regions = _mapped_shm(process.pid)
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        _kill_group(process.pid)
        _unlink_all(regions)

    def kill(self) -> None:
        """Stop the server abruptly, as a crash would (its shared-memory files are removed afterwards)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            regions = _mapped_shm(process.pid)
            _kill_group(process.pid)
            process.wait(timeout=10)
            _unlink_all(regions)

    def restart(self, timeout_s: float = 60.0) -> None:
        """Start again on the same ports (after stop or kill)."""
        self.stop()
        self.start(timeout_s)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def cleanup(self) -> None:
        """Stop and remove the working folder."""
        self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> LocalTriton:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
