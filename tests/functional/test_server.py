"""The Lipsync RPC end to end over a real channel: response order, output, health, reflection, HTTP, drain."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from lipsync_service import __version__
from lipsync_service._proto.nvidia.ai4m.audio.v1 import audio_pb2
from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2
from tests import synth
from tests.functional.helpers import (
    audio_msg,
    config,
    expect_error,
    requests,
    run_call,
    running_server,
    video_msg,
)

SERVICE = "nvidia.ai4m.lipsync.v1.LipSyncService"


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("media")
    return {
        "video": synth.make_video(d / "v.mp4", seconds=2.0, layout="faststart").read_bytes(),
        "audio": synth.make_wav(d / "a.wav", seconds=2.0).read_bytes(),
        "short_audio": synth.make_wav(d / "s.wav", seconds=1.2).read_bytes(),
        "mp3": synth.make_mp3(d / "a.mp3", seconds=2.0).read_bytes(),
    }


def _decoded(tmp_path: Path, data: bytes) -> dict:
    path = tmp_path / "out.mp4"
    path.write_bytes(data)
    return synth.probe(path)


def test_response_order_and_output(server, clip, tmp_path):
    res = run_call(server, requests(clip["video"], clip["audio"], config()),
                   metadata=(("client-session-id", "session-42"),))
    # service_info first, then the config echo, then only chunks and keepalives.
    assert res.order[0] == "service_info" and res.order[1] == "config"
    assert set(res.order[2:]) <= {"video_file_data", "keepalive"} and res.video_chunks >= 1
    info = res.service_info
    assert info.feature_name == "lipsync" and info.feature_version == __version__
    assert info.client_session_id == "session-42"
    assert len(info.server_request_id) == 32 and int(info.server_request_id, 16) >= 0
    assert info.model_info == "passthrough"
    # The echo has every default filled in.
    echo = res.config
    assert echo.input_audio_codec == audio_pb2.AUDIO_CODEC_WAV
    assert echo.output_audio_codec == audio_pb2.AUDIO_CODEC_OPUS
    assert echo.output_video_encoding.lossy.bitrate_mbps == 30
    assert echo.output_video_encoding.lossy.idr_interval == 8
    assert echo.HasField("extend_audio") and echo.HasField("head_movement_speed")
    out = _decoded(tmp_path, res.video)
    assert out["frame_count"] == 50 and out["width"] == 160 and out["height"] == 120
    assert out["video_codec"] == "h264" and out["audio_codec"] == "opus"
    assert out["pts"][0] == 0.0


def test_defaults_without_config_and_no_session_id(server, clip, tmp_path):
    res = run_call(server, requests(clip["video"], clip["audio"], None))
    assert res.service_info.client_session_id == ""
    assert res.config.input_audio_codec == audio_pb2.AUDIO_CODEC_WAV
    assert _decoded(tmp_path, res.video)["frame_count"] == 50


def test_request_ids_differ(server, clip):
    a = run_call(server, requests(clip["video"], clip["audio"], config()))
    b = run_call(server, requests(clip["video"], clip["audio"], config()))
    assert a.service_info.server_request_id != b.service_info.server_request_id


def test_options_reach_the_output(server, clip, tmp_path):
    """Shorter MP3 speech, MP3 output, silence extension: options flow from the config to the file."""
    cfg = config(input_audio_codec=audio_pb2.AUDIO_CODEC_MP3, output_audio_codec=audio_pb2.AUDIO_CODEC_MP3,
                 extend_audio=lipsync_pb2.EXTEND_AUDIO_SILENCE)
    res = run_call(server, requests(clip["video"], clip["mp3"], cfg))
    out = _decoded(tmp_path, res.video)
    assert res.config.output_audio_codec == audio_pb2.AUDIO_CODEC_MP3
    assert out["audio_codec"].startswith("mp3") and out["frame_count"] == 50
    # Without extension the shorter input (1.2 s of speech) decides the length.
    res = run_call(server, requests(clip["video"], clip["short_audio"], config()))
    assert _decoded(tmp_path, res.video)["frame_count"] == 30


def test_keepalives_when_the_server_is_slow(clip, tmp_path):
    """A client that pauses between chunks gets keepalives; the call still succeeds."""
    with running_server(keepalive_interval_s=0.2) as srv:
        res = run_call(srv, requests(clip["video"], clip["audio"], config(), chunk=4096, delay_s=0.05))
    assert res.keepalives >= 2
    assert _decoded(tmp_path, res.video)["frame_count"] == 50


def test_health_reflection_and_http(server):
    with server.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == \
                health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        reply = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in reply.list_services_response.service}
        assert {SERVICE, "grpc.health.v1.Health"} <= names
        reply = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            file_containing_symbol=SERVICE)])))
        assert reply.file_descriptor_response.file_descriptor_proto

    base = server.http_base
    with urllib.request.urlopen(base + "/v1/health/live", timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(base + "/v1/health/ready", timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(base + "/v1/metrics", timeout=5) as r:
        text = r.read().decode()
    assert "lipsync_streams_active" in text and "lipsync_frames_processed_total" in text
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(base + "/nope", timeout=5)
    assert err.value.code == 404
    # Garbage on the socket gets a 400, and the server keeps answering afterwards.
    with socket.create_connection(("127.0.0.1", server.server.http_port), timeout=5) as s:
        s.sendall(b"\x00\x01garbage\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    with socket.create_connection(("127.0.0.1", server.server.http_port), timeout=5) as s:
        s.sendall(b"GET /v1/health/live HTTP/1.1\r\n" + b"X-Long: " + b"a" * 40000 + b"\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 431")
    with urllib.request.urlopen(base + "/v1/health/live", timeout=5) as r:
        assert r.status == 200


def test_metrics_count_streams_by_outcome(clip):
    with running_server() as srv:
        run_call(srv, requests(clip["video"], clip["audio"], config()))
        expect_error(srv, [config(), video_msg(b"not an mp4 at all"), audio_msg(clip["audio"])],
                     grpc.StatusCode.INVALID_ARGUMENT)
        with urllib.request.urlopen(srv.http_base + "/v1/metrics", timeout=5) as r:
            text = r.read().decode()
    assert 'lipsync_streams_total{code="OK"} 1.0' in text
    assert 'lipsync_streams_total{code="INVALID_ARGUMENT"} 1.0' in text
    assert "lipsync_frames_processed_total 50.0" in text
    assert 'lipsync_stage_seconds_count{stage="encode"} 1.0' in text


def test_drain_finishes_running_streams_and_refuses_new(clip, tmp_path):
    """Drain: health NOT_SERVING and /ready 503, new calls UNAVAILABLE, the running call completes."""
    import concurrent.futures

    with running_server(keepalive_interval_s=0.2) as srv:
        pool = concurrent.futures.ThreadPoolExecutor(1)
        slow = pool.submit(run_call, srv, requests(clip["video"], clip["audio"], config(), chunk=8192, delay_s=0.03))
        from tests.functional.helpers import wait_until
        assert wait_until(lambda: srv.server.admission.active == 1)
        drained = __import__("asyncio").run_coroutine_threadsafe(srv.server.drain(30), srv.loop)
        assert wait_until(lambda: not srv.server.ready)
        with srv.channel() as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE)).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(srv.http_base + "/v1/health/ready", timeout=5)
        assert err.value.code == 503
        msg = expect_error(srv, requests(clip["video"], clip["audio"], config()), grpc.StatusCode.UNAVAILABLE)
        assert msg == "server is shutting down"
        res = slow.result(60)
        assert drained.result(30) is True
        pool.shutdown()
    assert _decoded(tmp_path, res.video)["frame_count"] == 50


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_drains_then_exits_zero(clip, tmp_path):
    """The real `python -m lipsync_service` process: SIGTERM lets the running call finish, refuses new ones,
    exits 0; every log line of the call carries its request id, and one structured line ends it."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    from tests.functional.helpers import collect, wait_until

    grpc_port, http_port = _free_port(), _free_port()
    env = dict(os.environ, NIM_HOST="127.0.0.1", NIM_GRPC_API_PORT=str(grpc_port), NIM_HTTP_API_PORT=str(http_port),
               NV_AI4M_LS_PROCESSOR="passthrough", NV_AI4M_DRAIN_TIMEOUT_S="30", NV_AI4M_KEEPALIVE_INTERVAL_S="0.5")
    proc = subprocess.Popen([sys.executable, "-m", "lipsync_service"], env=env, stderr=subprocess.PIPE, text=True)
    stderr_lines: list[str] = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v1/health/ready", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        assert wait_until(ready, timeout=60), "".join(stderr_lines)
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2_grpc

        stub = lipsync_pb2_grpc.LipSyncServiceStub(channel)
        result: dict = {}
        slow_reqs = requests(clip["video"], clip["audio"], config(), chunk=4096, delay_s=0.1)
        worker = threading.Thread(target=lambda: result.update(res=collect(stub.Lipsync(slow_reqs, timeout=60))))
        worker.start()
        time.sleep(1.0)  # the call is under way
        proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: not ready(), timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            collect(stub.Lipsync(requests(clip["video"], clip["audio"], config()), timeout=10))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        worker.join(60)
        assert proc.wait(60) == 0
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
    res = result["res"]
    out = tmp_path / "drained.mp4"
    out.write_bytes(res.video)
    assert synth.probe(out)["frame_count"] == 50
    rid = res.service_info.server_request_id
    tagged = [line for line in stderr_lines if line.startswith(f"[{rid}]")]
    assert any("lipsync_service.server.session" in line for line in tagged)
    finished = [json.loads(line.split(": ", 1)[1]) for line in tagged if '"request_finished"' in line]
    assert len(finished) == 1 and finished[0]["outcome"] == "OK" and finished[0]["frames"] == 50
    assert finished[0]["request_id"] == rid and finished[0]["duration_s"] > 1.0


def test_serve_refuses_to_start_with_missing_tls_files(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, NIM_SSL_MODE="mtls", NIM_SSL_CERT_PATH=str(tmp_path / "server.pem"),
               NIM_SSL_KEY_PATH=str(tmp_path / "server.key"), NIM_GRPC_API_PORT=str(_free_port()),
               NIM_HTTP_API_PORT=str(_free_port()), NV_AI4M_LS_PROCESSOR="passthrough")
    proc = subprocess.run([sys.executable, "-m", "lipsync_service", "serve"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert f"cannot start: NIM_SSL_CERT_PATH={tmp_path / 'server.pem'}: cannot read it (No such file" in proc.stderr


def test_not_ready_until_the_backend_answers(monkeypatch, clip):
    """Warm-up against an unreachable backend: the server stays up and NOT_SERVING, retries, then serves."""
    from lipsync_service.core.factory import ProcessorFactory
    from lipsync_service.core.processor import PassThroughProcessor
    from lipsync_service.errors import InferenceUnavailable
    from lipsync_service.server import app
    from tests.functional.helpers import ServerThread, server_settings, wait_until

    monkeypatch.setattr(app, "WARMUP_RETRY_S", 0.2)
    attempts = []

    def flaky(settings):
        attempts.append(1)
        if len(attempts) < 3:
            raise InferenceUnavailable("inference server localhost:8101 is not reachable")
        return PassThroughProcessor()

    settings = server_settings()
    srv = ServerThread(settings, processors=ProcessorFactory(settings, flaky)).start()
    try:
        assert not srv.server.ready
        with srv.channel() as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert wait_until(lambda: srv.server.ready, timeout=10)
            assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        assert len(attempts) == 3
        assert run_call(srv, requests(clip["video"], clip["audio"], config())).video_chunks >= 1
    finally:
        srv.stop()
