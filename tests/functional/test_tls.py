"""TLS and mutual TLS against the real in-process server, with a CA and certificates made by the test."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lipsync_service._proto.nvidia.ai4m.audio.v1 import audio_pb2
from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2, lipsync_pb2_grpc
from lipsync_service.client import channel as channels
from lipsync_service.client import cli, stream
from lipsync_service.server.app import LipsyncServer, StartupError
from tests import synth
from tests.functional.helpers import ServerThread, server_settings

trustme = pytest.importorskip("trustme", reason="trustme is in the test extra: pip install -e '.[test]'")


class Pki:
    """A CA with a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""

    def __init__(self, folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA(organization_name=f"{name} test CA")
        self.ca_pem = folder / "ca.crt"
        self.ca.cert_pem.write_to_path(str(self.ca_pem))
        server = self.ca.issue_cert("localhost", "127.0.0.1")
        self.server_cert, self.server_key = folder / "server.crt", folder / "server.key"
        server.cert_chain_pems[0].write_to_path(str(self.server_cert))
        server.private_key_pem.write_to_path(str(self.server_key))
        client = self.ca.issue_cert("lipsync-client@example.com")
        self.client_cert, self.client_key = folder / "client.crt", folder / "client.key"
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))

    def secrets(self) -> list[str]:
        """Distinctive lines of every private key (what must never reach a log)."""
        lines = []
        for key in (self.server_key, self.client_key):
            body = [ln for ln in key.read_text().splitlines() if ln and not ln.startswith("-----")]
            lines += body[:3]
        return lines


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"), "ours")


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("other-pki"), "foreign")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tls-media")
    return {
        "video": synth.make_video(folder / "in.mp4", seconds=1.0, fps=25, size=(64, 64), layout="faststart"),
        "audio": synth.make_wav(folder / "speech.wav", seconds=1.0, rate=16000),
    }


def _start(mode: str, pki: Pki) -> ServerThread:
    return ServerThread(server_settings(
        ssl_mode=mode, ssl_cert_path=pki.server_cert, ssl_key_path=pki.server_key, ssl_ca_path=pki.ca_pem,
    )).start()


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[ServerThread]:
    srv = _start("tls", pki)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def mtls_server(pki: Pki) -> Iterator[ServerThread]:
    srv = _start("mtls", pki)
    yield srv
    srv.stop()


def _health(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status


def _lipsync(channel: grpc.Channel, media: dict[str, Path]) -> stream.LipsyncResult:
    return stream.collect(stream.lipsync(
        lipsync_pb2_grpc.LipSyncServiceStub(channel),
        lipsync_pb2.LipsyncConfig(input_audio_codec=audio_pb2.AUDIO_CODEC_WAV), media["video"], media["audio"],
        timeout=60))


def _refused(channel: grpc.Channel) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        _health(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
    return info.value


def test_tls_call_with_the_ca_works_end_to_end(tls_server, pki, media) -> None:
    with channels.create_channel(tls_server.target, ssl_mode="tls", root_cert=pki.ca_pem) as channel:
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        result = _lipsync(channel, media)
    assert result.order[:2] == ["service_info", "config"]
    assert synth.probe(result.video)["frame_count"] == 25


def test_tls_server_refuses_plaintext_and_unknown_ca(tls_server, other_pki) -> None:
    with channels.create_channel(tls_server.target) as channel:
        _refused(channel)
    with channels.create_channel(tls_server.target, ssl_mode="TLS", root_cert=other_pki.ca_pem) as channel:
        _refused(channel)


def test_mtls_cli_with_a_valid_client_certificate_works(mtls_server, pki, media, tmp_path) -> None:
    output = tmp_path / "out.mp4"
    code = cli.main([
        "--target", mtls_server.target, "--ssl-mode", "mtls", "--ssl-root-cert", str(pki.ca_pem),
        "--ssl-cert", str(pki.client_cert), "--ssl-key", str(pki.client_key),
        "--video-input", str(media["video"]), "--audio-input", str(media["audio"]),
        "--output", str(output), "--quiet",
    ])
    assert code == 0
    info = synth.probe(output)
    assert info["frame_count"] == 25 and info["video_codec"] == "h264"


def test_mtls_refuses_a_client_without_a_certificate(mtls_server, pki) -> None:
    with channels.create_channel(mtls_server.target, ssl_mode="TLS", root_cert=pki.ca_pem) as channel:
        _refused(channel)


def test_mtls_refuses_a_client_certificate_from_another_ca(mtls_server, pki, other_pki) -> None:
    with channels.create_channel(mtls_server.target, ssl_mode="MTLS", root_cert=pki.ca_pem,
                                 cert=other_pki.client_cert, key=other_pki.client_key) as channel:
        _refused(channel)


def test_mtls_cli_refused_exits_nonzero_and_leaves_no_output(mtls_server, pki, other_pki, media, tmp_path,
                                                             capsys) -> None:
    output = tmp_path / "out.mp4"
    code = cli.main([
        "--target", mtls_server.target, "--ssl-mode", "MTLS", "--ssl-root-cert", str(pki.ca_pem),
        "--ssl-cert", str(other_pki.client_cert), "--ssl-key", str(other_pki.client_key),
        "--video-input", str(media["video"]), "--audio-input", str(media["audio"]),
        "--output", str(output), "--quiet", "--timeout", "20",
    ])
    assert code == cli.EXIT_CALL_FAILED
    assert "UNAVAILABLE" in capsys.readouterr().err
    assert not output.exists()


def test_no_key_material_in_logs(pki, other_pki, media, caplog, capsys) -> None:
    caplog.set_level(logging.DEBUG)
    srv = _start("mtls", pki)
    try:
        with channels.create_channel(srv.target, ssl_mode="MTLS", root_cert=pki.ca_pem, cert=pki.client_cert,
                                     key=pki.client_key) as channel:
            _lipsync(channel, media)
        with channels.create_channel(srv.target, ssl_mode="MTLS", root_cert=pki.ca_pem,
                                     cert=other_pki.client_cert, key=other_pki.client_key) as channel:
            _refused(channel)
    finally:
        srv.stop()
    captured = capsys.readouterr()
    text = caplog.text + captured.out + captured.err
    assert caplog.records, "the server logged nothing: the check would be vacuous"
    assert "PRIVATE KEY" not in text
    for line in pki.secrets() + other_pki.secrets():
        assert line not in text


def test_missing_or_unreadable_tls_files_stop_startup_with_the_variable_named(pki, tmp_path) -> None:
    import asyncio

    missing = server_settings(ssl_mode="mtls", ssl_cert_path=pki.server_cert, ssl_key_path=pki.server_key,
                              ssl_ca_path=tmp_path / "absent-ca.crt")
    with pytest.raises(StartupError, match="NIM_SSL_CA_PATH"):
        asyncio.run(LipsyncServer(missing).start())
    unset = server_settings(ssl_mode="tls", ssl_cert_path=pki.server_cert)
    with pytest.raises(StartupError, match="NIM_SSL_KEY_PATH"):
        asyncio.run(LipsyncServer(unset).start())
