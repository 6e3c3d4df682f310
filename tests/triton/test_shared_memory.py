"""The Triton backend's shared-memory path: same output as plain gRPC, regions cleaned up, fallback, recovery."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from lipsync_service.errors import InferenceError, InferenceUnavailable
from lipsync_service.inference import triton as triton_module
from lipsync_service.inference.triton import TritonBackend, shm_wanted

pytestmark = pytest.mark.triton

DEV_SHM = Path("/dev/shm")


def _batch(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    face = rng.random((n, 6, 96, 96), dtype=np.float32)
    face[:, :3, 48:] = 0.0
    return face, np.clip(rng.normal(size=(n, 1, 80, 16)) * 2, -4, 4).astype(np.float32)


def _our_shm_files() -> set[str]:
    return {p.name for p in DEV_SHM.glob(f"lipsync_{os.getpid()}_*")}


def _server_regions(url: str) -> set[str]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        status = client.get_system_shared_memory_status(as_json=True)
    finally:
        client.close()
    return set(status.get("regions", {}))


@pytest.mark.parametrize(
    ("mode", "url", "expected"),
    [
        ("auto", "localhost:8001", True),
        ("auto", "127.0.0.1:8001", True),
        ("auto", "unix:///tmp/triton.sock", True),
        ("auto", "triton.internal:8001", False),
        ("on", "triton.internal:8001", True),
        ("off", "127.0.0.1:8001", False),
    ],
)
def test_shared_memory_is_used_for_local_targets_only(mode: str, url: str, expected: bool) -> None:
    assert shm_wanted(mode, url) is expected


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(InferenceError, match="auto, on, off"):
        shm_wanted("yes", "localhost:1")


@pytest.mark.skipif(not DEV_SHM.is_dir(), reason="no /dev/shm on this machine")
def test_shared_memory_matches_plain_grpc_and_leaves_nothing_behind(triton_server) -> None:
    shm = TritonBackend(triton_server.url, "opening_warp_rgb96", max_batch_size=8, shm="on")
    plain = TritonBackend(triton_server.url, "opening_warp_rgb96", max_batch_size=8, shm="off")
    face, mel = _batch(11)  # two calls (8 + 3): a partial batch reuses the regions
    expected = plain.infer(face, mel)
    got = shm.infer(face, mel)
    again = shm.infer(face[:3], mel[:3])
    assert got.shape == (11, 3, 96, 96)
    assert float(np.abs(got - expected).max()) <= 1e-6
    assert float(np.abs(again - expected[:3]).max()) <= 1e-6
    files = _our_shm_files()
    assert len(files) == 2, files  # one input and one output region for the one calling thread
    assert files <= _server_regions(triton_server.url)
    shm.close()
    plain.close()
    assert _our_shm_files() == set()
    assert not (files & _server_regions(triton_server.url))


def test_released_thread_frees_its_regions(triton_server) -> None:
    import threading

    backend = TritonBackend(triton_server.url, "opening_warp_rgb96", max_batch_size=4, shm="on")
    face, mel = _batch(2)
    seen: list[set[str]] = []

    def stream() -> None:
        backend.infer(face, mel)
        seen.append(_our_shm_files())
        backend.release_thread()

    worker = threading.Thread(target=stream)
    worker.start()
    worker.join(timeout=60)
    assert len(seen) == 1 and len(seen[0]) == 2
    assert _our_shm_files() == set()
    backend.close()


def test_failed_registration_falls_back_to_plain_grpc(triton_server, monkeypatch) -> None:
    from tritonclient.utils import InferenceServerException

    def refuse(*args, **kwargs):
        # What a server in another container answers: it cannot open a region on our host.
        raise InferenceServerException("Unable to open shared memory region", status="StatusCode.INTERNAL")

    backend = TritonBackend(triton_server.url, "opening_warp_rgb96", shm="on")
    plain = TritonBackend(triton_server.url, "opening_warp_rgb96", shm="off")
    monkeypatch.setattr(triton_module, "_Regions", refuse)
    face, mel = _batch(3)
    out = backend.infer(face, mel)
    assert float(np.abs(out - plain.infer(face, mel)).max()) <= 1e-6
    assert _our_shm_files() == set()
    backend.close()
    plain.close()


def test_server_restart_with_shared_memory_is_unavailable_then_recovers(own_triton_server) -> None:
    backend = TritonBackend(own_triton_server.url, "opening_warp_rgb96", timeout_s=10, shm="on")
    face, mel = _batch(4)
    before = backend.infer(face, mel)
    own_triton_server.kill()
    with pytest.raises(InferenceUnavailable):
        backend.infer(face, mel)
    own_triton_server.start(timeout_s=90)
    # The restarted server knows none of the old regions: the backend registers fresh ones.
    after = backend.infer(face, mel)
    assert float(np.abs(after - before).max()) <= 1e-6
    assert len(_our_shm_files()) == 2
    backend.close()
    assert _our_shm_files() == set()
