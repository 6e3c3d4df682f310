"""Pieces of the server that need no server: factory, flags, CLI, TLS."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest

from lipsync_service import config as job_config
from lipsync_service._proto.nvidia.ai4m.audio.v1 import audio_pb2
from lipsync_service.cli import main as cli_main
from lipsync_service.client.flags import add_job_flags, job_config_from_args
from lipsync_service.core import factory as processors
from lipsync_service.core.processor import PassThroughProcessor
from lipsync_service.errors import InvalidInput
from lipsync_service.job import AudioCodec, BackgroundAudioSpec, CustomEncoding, EncodingMode, ExtendAudio, ExtendVideo
from lipsync_service.server.app import StartupError, server_credentials
from lipsync_service.settings import Settings
from tests import synth

# Processor factory ---------------------------------------------------------------------------------

def test_processor_choice():
    assert isinstance(processors.build_processor(Settings(processor="passthrough")), PassThroughProcessor)
    with pytest.raises(ValueError, match="NV_AI4M_LS_PROCESSOR='magic' is not known"):
        processors.build_processor(Settings(processor="magic"))


def test_factory_reuses_the_warm_up_processor():
    built = []

    def build(settings):
        built.append(PassThroughProcessor())
        return built[-1]

    factory = processors.ProcessorFactory(Settings(processor="passthrough"), build)
    factory.warm_up()
    assert factory.model_info == "passthrough"
    first, second = factory.create(), factory.create()
    assert first is built[0] and second is built[1] and len(built) == 2


# Shared job flags --------------------------------------------------------------------------------

def _parse(argv, tmp_path):
    parser = argparse.ArgumentParser()
    parser.add_argument("--audio", type=Path)
    add_job_flags(parser)
    return parser.parse_args(argv)


def test_flags_to_config(tmp_path):
    wav = synth.make_wav(tmp_path / "a.wav", seconds=0.2)
    mp3 = synth.make_mp3(tmp_path / "b.mp3", seconds=0.2)
    args = _parse(["--audio", str(mp3), "--extend-audio", "SILENCE", "--extend-video", "reverse", "--bitrate", "5",
                   "--idr-interval", "12", "--output-audio-codec", "mp3", "--head-movement-speed", "1",
                   "--background-audio-input", str(wav), "--background-audio-volume", "0.25"], tmp_path)
    cfg = job_config.from_proto(job_config_from_args(args))
    assert cfg.input_audio_codec is AudioCodec.MP3
    assert cfg.extend_audio is ExtendAudio.SILENCE and cfg.extend_video is ExtendVideo.REVERSE
    assert (cfg.video_encoding.bitrate_mbps, cfg.video_encoding.idr_interval) == (5, 12)
    assert cfg.output_audio_codec is AudioCodec.MP3 and cfg.head_movement_speed == 1
    assert cfg.background == BackgroundAudioSpec(codec=AudioCodec.WAV, volume=0.25)

    args = _parse(["--audio", str(wav), "--custom-encoding-params", '{"preset": "fast", "crf": 20, "bframes": 0}'],
                  tmp_path)
    cfg = job_config.from_proto(job_config_from_args(args))
    assert cfg.video_encoding.custom == CustomEncoding(preset="fast", crf=20, bframes=0)
    assert job_config_from_args(args).input_audio_codec == audio_pb2.AUDIO_CODEC_WAV

    args = _parse(["--audio", str(wav), "--lossless"], tmp_path)
    assert job_config.from_proto(job_config_from_args(args)).video_encoding.mode is EncodingMode.LOSSLESS
    # Bad values pass through to the one place that judges them: config validation.
    args = _parse(["--audio", str(wav), "--bitrate", "0"], tmp_path)
    with pytest.raises(InvalidInput, match="bitrate_mbps must be between 1 and 1000, got 0"):
        job_config.from_proto(job_config_from_args(args))


def test_contradictory_flags(tmp_path):
    wav = synth.make_wav(tmp_path / "a.wav", seconds=0.2)
    with pytest.raises(InvalidInput, match="--lossless and --bitrate/--idr-interval cannot be combined"):
        job_config_from_args(_parse(["--audio", str(wav), "--lossless", "--bitrate", "3"], tmp_path))
    with pytest.raises(InvalidInput, match="--mix-background-audio needs --background-audio-input"):
        job_config_from_args(_parse(["--audio", str(wav), "--mix-background-audio"], tmp_path))
    with pytest.raises(InvalidInput, match="invalid JSON"):
        job_config_from_args(_parse(["--audio", str(wav), "--custom-encoding-params", "{nope"], tmp_path))
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(InvalidInput, match="not a WAV or MP3 file"):
        job_config_from_args(_parse(["--audio", str(tmp_path / "x.txt")], tmp_path))


# The offline runner ------------------------------------------------------------------------------

def test_cli_run_writes_the_output(tmp_path, capsys):
    video = synth.make_video(tmp_path / "v.mp4", seconds=1.0, layout="transactional")
    audio = synth.make_wav(tmp_path / "a.wav", seconds=2.0)
    out = tmp_path / "o.mp4"
    code = cli_main(["run", "--video", str(video), "--audio", str(audio), "--output", str(out),
                     "--processor", "passthrough", "--extend-video", "forward", "--output-audio-codec", "mp3"])
    assert code == 0
    info = synth.probe(out)
    assert info["frame_count"] == 50 and info["audio_codec"].startswith("mp3")
    assert "50 frames" in capsys.readouterr().err


def test_cli_run_fails_cleanly(tmp_path, capsys):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"garbage" * 1000)
    audio = synth.make_wav(tmp_path / "a.wav", seconds=1.0)
    out = tmp_path / "o.mp4"
    code = cli_main(["run", "--video", str(video), "--audio", str(audio), "--output", str(out),
                     "--processor", "passthrough"])
    assert code == 1
    assert "error: video:" in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == sorted([video, audio])  # no output, no partial file


# TLS settings ---------------------------------------------------------------------------------------

def test_tls_needs_readable_files(tmp_path):
    assert server_credentials(Settings(ssl_mode="disabled")) is None
    with pytest.raises(StartupError, match="NIM_SSL_MODE=tls needs NIM_SSL_CERT_PATH"):
        server_credentials(Settings(ssl_mode="TLS"))
    with pytest.raises(StartupError, match=r"NIM_SSL_CERT_PATH=.*missing.pem: cannot read it \(No such file"):
        server_credentials(Settings(ssl_mode="tls", ssl_cert_path=tmp_path / "missing.pem",
                                    ssl_key_path=tmp_path / "missing.key"))
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    with pytest.raises(StartupError, match="NIM_SSL_MODE=mtls needs NIM_SSL_CA_PATH"):
        server_credentials(Settings(ssl_mode="mtls", ssl_cert_path=cert, ssl_key_path=key))


# Trailing metadata ---------------------------------------------------------------------------------

def test_trailers_stay_within_what_grpc_clients_accept():
    """Found by the fuzzer: 40 speakers in every frame gave 16 KB of re-drawn notes, and the client refused the
    whole finished call with RESOURCE_EXHAUSTED (its metadata limit is 8 KiB)."""
    from lipsync_service.client.stream import CallSummary
    from lipsync_service.server.session import TRAILER_BYTES, fit_trailers

    many = [f"face {k} re-drawn in frames 0-24: it speaks (speaker data, speaker {k})" for k in range(200)]
    summary = CallSummary(frames=25, notices=["no face found in 3 of 25 frames: they are unchanged"], redrawn=many)
    pairs = fit_trailers(summary)
    assert sum(len(k) + len(v) + 32 for k, v in pairs) <= TRAILER_BYTES
    back = CallSummary.from_metadata(pairs)
    assert back.frames == 25 and back.redrawn == many[:len(back.redrawn)] and len(back.redrawn) > 10
    assert back.notices[0].startswith("no face found")
    assert back.notices[-1].startswith(f"{200 - len(back.redrawn)} more notes left out of this reply's trailers")
    small = CallSummary(frames=25, redrawn=many[:2])
    assert fit_trailers(small) == CallSummary(frames=25, redrawn=many[:2]).to_metadata()


class _LateCancelContext:
    """A call context whose client cancel is reported a moment after the request stream ended, as gRPC may."""

    def __init__(self, after_s: float) -> None:
        self._at = time.monotonic() + after_s

    def cancelled(self) -> bool:
        return time.monotonic() >= self._at


@pytest.mark.parametrize(("after_s", "upload_ended", "expected"), [
    (0.05, True, "CANCELLED"),  # the cancel arrives after the failure: it is still the cause
    (5.0, True, "INVALID_ARGUMENT"),  # a real bad upload: the cancel never comes within the wait
    (0.05, False, "INVALID_ARGUMENT"),  # failed before the upload ended: not a cancel in disguise
])
def test_a_cancel_reported_after_the_failure_is_the_cause(after_s, upload_ended, expected):
    """Found in CI: a client cancelling mid-upload was counted as INVALID_ARGUMENT (a truncated MP4), because gRPC
    ended the request stream before it reported the cancel."""
    import asyncio

    import grpc

    from lipsync_service.server.admission import Admission
    from lipsync_service.server.metrics import Metrics
    from lipsync_service.server.session import Session

    settings = Settings(processor="passthrough")
    factory = processors.ProcessorFactory(settings, processors.build_processor)

    async def run() -> str:
        session = Session(settings, factory, Admission(1, 1, 1.0), Metrics(),
                          context=_LateCancelContext(after_s))  # type: ignore[arg-type]
        session.outcome, session.error_message = grpc.StatusCode.INVALID_ARGUMENT, "truncated MP4"
        session._intake.done = upload_ended
        started = time.monotonic()
        await session._recheck_cancelled()
        assert time.monotonic() - started < 1.0, "a bad upload's status must not wait long"
        return session.outcome.name

    assert asyncio.run(run()) == expected
