"""`lipsync-service triton`: a local Triton in one command, used through TritonBackend, stopped cleanly by SIGTERM;
without the triton extra it names the extra to install."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lipsync_service.cli import main
from lipsync_service.inference.base import INPUT_FACE

pytestmark = pytest.mark.triton

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVE_LINE = "serve with: NV_AI4M_LS_BACKEND=triton NV_AI4M_TRITON_URL="


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _served_model(url: str) -> str:
    """The name of a model the server has ready (the default repository's model, whatever it is called)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        index = client.get_model_repository_index(as_json=True)
    finally:
        client.close()
    ready = [model["name"] for model in index.get("models", []) if model.get("state") == "READY"]
    assert ready, index
    return ready[0]


def _lines(pipe, into: queue.Queue) -> None:
    for line in pipe:
        into.put(line)
    into.put(None)


def test_triton_verb_serves_until_sigterm_and_frees_its_ports(tmp_path) -> None:
    pytest.importorskip("pytriton", reason="nvidia-pytriton (the triton extra) is not installed")
    from lipsync_service.inference.local_triton import free_port
    from lipsync_service.inference.triton import TritonBackend

    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "lipsync_service", "triton", "--grpc-port", str(grpc_port), "--http-port",
         str(http_port), "--metrics-port", str(metrics_port)],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    out: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(process.stdout, out), daemon=True).start()
    try:
        url = None
        deadline = time.monotonic() + 180
        while url is None and time.monotonic() < deadline:
            try:
                line = out.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                pytest.skip(f"tritonserver did not start on this machine: {process.communicate()[1][-2000:]}")
            if line.startswith(SERVE_LINE):
                assert line.strip() == f"{SERVE_LINE}127.0.0.1:{grpc_port} lipsync-service serve"
                url = f"127.0.0.1:{grpc_port}"
        assert url is not None, "no serve line within 180 s"

        backend = TritonBackend(url, _served_model(url), max_batch_size=4)
        try:
            spec = backend.spec
            rng = np.random.default_rng(0)
            mel = rng.normal(size=(2, 1, 80, 16)).astype(np.float32)
            # Whatever contract the default model has: face + mel -> face, or mel -> lip shape.
            face = rng.random((2, 6, spec.face_size, spec.face_size), dtype=np.float32) \
                if INPUT_FACE in spec.contract.inputs else None
            result = backend.infer(face, mel)
        finally:
            backend.close()
        assert result.shape[0] == 2 and np.isfinite(result).all()

        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        err = process.stderr.read()
    finally:
        if process.poll() is None:
            # A failed assertion above: stop the verb the way it is meant to be stopped, so that it stops its
            # tritonserver too (killing the verb would leave the server running).
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert process.returncode == 0, err
    assert "stopping Triton" in err
    for port in (grpc_port, http_port, metrics_port):
        assert _port_is_free(port), f"port {port} is still in use after the verb exited"


def test_triton_verb_without_the_extra_names_it(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "pytriton", None)  # import pytriton now raises ImportError
    assert main(["triton"]) == 1
    err = capsys.readouterr().err
    assert "lipsync-service triton: error: this command needs the 'triton' extra" in err
    assert "pip install 'lipsync-service[triton]'" in err


def test_triton_verb_refuses_a_missing_repository(tmp_path, capsys) -> None:
    pytest.importorskip("pytriton", reason="nvidia-pytriton (the triton extra) is not installed")
    assert main(["triton", "--model-repository", str(tmp_path / "nope")]) == 1
    assert f"no model repository at {tmp_path / 'nope'}" in capsys.readouterr().err
