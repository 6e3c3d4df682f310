"""The service against a real Triton that dies mid-stream: UNAVAILABLE naming it, NOT_SERVING, then recovery."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2
from lipsync_service.errors import InferenceUnavailable
from tests import faults, synth
from tests.functional.helpers import ServerThread, run_call, server_settings, wait_until

pytestmark = [pytest.mark.triton, pytest.mark.slow]

FRAMES, SIZE = faults.TRITON_FRAMES, faults.TRITON_SIZE
BOX = faults.BOX  # x, y, w, h of the "face" every frame announces (the generator redraws it)


@pytest.fixture
def triton() -> Iterator:
    """A LocalTriton of its own (this test kills and restarts it)."""
    pytest.importorskip("pytriton", reason="nvidia-pytriton (the triton extra) is not installed")
    from lipsync_service.inference.local_triton import LocalTriton

    try:
        server = LocalTriton(faults.TRITON_REPO)
        server.start(timeout_s=120)
    except InferenceUnavailable as exc:
        pytest.skip(f"tritonserver cannot run here: {exc}")
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return faults.triton_clip(tmp_path_factory.mktemp("triton_faults"))


def _reqs(clip: dict[str, bytes], delay_s: float = 0.0) -> Iterator[lipsync_pb2.LipsyncRequest]:
    return faults.triton_requests(clip, delay_s)


def _check_output(tmp_path: Path, video: bytes, name: str) -> None:
    out = tmp_path / name
    out.write_bytes(video)
    info = synth.probe(out)
    assert info["frame_count"] == FRAMES and (info["width"], info["height"]) == SIZE
    # The generator redrew the announced face: pixels inside the box differ from the input's.
    got = synth.decode_frames(out)[FRAMES // 2].to_ndarray(format="gray").astype(int)
    x, y, w, h = (int(v) for v in BOX)
    original = synth.draw_frame(FRAMES // 2, *SIZE, still=True)
    original_gray = original.mean(axis=2) if original.ndim == 3 else original
    assert np.abs(got[y + h // 2:y + h, x:x + w] - original_gray[y + h // 2:y + h, x:x + w]).mean() > 2


def _health(srv: ServerThread) -> int:
    with srv.channel() as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def _inference_calls(srv: ServerThread) -> float:
    return srv.metrics.registry.get_sample_value("lipsync_inference_seconds_count") or 0.0


def test_triton_killed_mid_stream_then_back(triton, clip, tmp_path, monkeypatch):
    from lipsync_service.server import app

    monkeypatch.setattr(app, "BACKEND_PROBE_S", 0.3)
    # The RGB model: its crop is pasted (through the fallback ellipse) even on the synthetic face, which the
    # landmark model cannot read, so every frame reaches the generator.
    settings = server_settings(processor="neural", backend="triton", triton_url=triton.url,
                               model_repository=faults.TRITON_REPO, model_name="opening_warp_rgb96",
                               triton_timeout_s=10, max_concurrency_per_gpu=2, input_queue_timeout_s=30)
    srv = ServerThread(settings).start()
    try:
        assert srv.server.ready and _health(srv) == health_pb2.HealthCheckResponse.SERVING
        res = run_call(srv, _reqs(clip), timeout=120)
        _check_output(tmp_path, res.video, "before.mp4")
        # The backend reports every generator call to the metrics: batches of at most 8 frames.
        calls = _inference_calls(srv)
        assert calls >= FRAMES / 8
        assert srv.metrics.registry.get_sample_value("lipsync_inference_batch_size_sum") == FRAMES

        # Two slow uploads; Triton dies once both are calling it.
        outcomes: list[grpc.RpcError | None] = []

        def stream() -> None:
            try:
                run_call(srv, _reqs(clip, delay_s=0.04), timeout=120)
                outcomes.append(None)
            except grpc.RpcError as err:
                outcomes.append(err)

        workers = [threading.Thread(target=stream) for _ in range(2)]
        for worker in workers:
            worker.start()
        assert wait_until(lambda: _inference_calls(srv) >= calls + 2, timeout=60)
        triton.kill()
        for worker in workers:
            worker.join(120)
        assert len(outcomes) == 2
        for err in outcomes:
            assert err is not None, "a stream that needed the generator after the kill succeeded"
            assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
            assert f"Triton at {triton.url} is unreachable" in err.details()

        # Down: not ready (health NOT_SERVING, /v1/health/ready 503) but alive, and no slot held.
        assert wait_until(lambda: not srv.server.ready, timeout=5)
        assert _health(srv) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert wait_until(lambda: srv.server.admission.active == 0, timeout=5)
        # Counted as each call finishes, which may be a moment after its slot was given back.
        assert wait_until(lambda: srv.metrics.registry.get_sample_value(
            "lipsync_streams_total", {"code": "UNAVAILABLE"}) == 2, timeout=2)

        triton.start(timeout_s=120)  # same ports
        assert wait_until(lambda: srv.server.ready, timeout=30)
        assert _health(srv) == health_pb2.HealthCheckResponse.SERVING
        res = run_call(srv, _reqs(clip), timeout=120)
        _check_output(tmp_path, res.video, "after.mp4")
    finally:
        srv.stop()
