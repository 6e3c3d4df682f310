"""lipsync-client and the client stream API.

Two kinds of server: a recording one written here (a real gRPC server whose handler records every request
and replies as the test scripts it) to check exactly what the client puts on the wire and how it handles
failures; and the real in-process LipSync server for end-to-end runs on synthetic media.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import wrappers_pb2

from lipsync_service._proto.nvidia.ai4m.audio.v1 import audio_pb2
from lipsync_service._proto.nvidia.ai4m.common.v1 import common_pb2
from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2, lipsync_pb2_grpc
from lipsync_service.client import channel as channels
from lipsync_service.client import cli, stream
from lipsync_service.speakers import frames_from_json
from tests import synth

CHUNK = 64 * 1024


class RecordingServicer(lipsync_pb2_grpc.LipSyncServiceServicer):
    """Records the request stream; answers with service_info, the config, `reply` bytes, then `fail` if set."""

    def __init__(self) -> None:
        self.requests: list[lipsync_pb2.LipsyncRequest] = []
        self.metadata: dict[str, str] = {}
        self.reply = b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 1200
        self.fail: tuple[grpc.StatusCode, str] | None = None
        self.done = threading.Event()

    def Lipsync(self, request_iterator, context) -> Iterator[lipsync_pb2.LipsyncResponse]:  # noqa: N802
        self.metadata = dict(context.invocation_metadata())
        for request in request_iterator:
            self.requests.append(request)
        self.done.set()
        yield lipsync_pb2.LipsyncResponse(service_info=common_pb2.ServiceInfo(
            feature_name="lipsync", server_request_id="abc123",
            client_session_id=self.metadata.get("client-session-id", "")))
        first = self.requests[0] if self.requests else None
        yield lipsync_pb2.LipsyncResponse(config=first.config if first is not None and first.HasField("config")
                                          else lipsync_pb2.LipsyncConfig())
        half = len(self.reply) // 2
        yield lipsync_pb2.LipsyncResponse(video_file_data=self.reply[:half])
        if self.fail is not None:
            context.abort(*self.fail)
        yield lipsync_pb2.LipsyncResponse(keepalive={})
        yield lipsync_pb2.LipsyncResponse(video_file_data=self.reply[half:])

    def media(self, field: str) -> bytes:
        return b"".join(getattr(r.input, field) for r in self.requests if r.HasField("input"))


@pytest.fixture
def recording_server() -> Iterator[tuple[RecordingServicer, str]]:
    servicer = RecordingServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    lipsync_pb2_grpc.add_LipSyncServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait()


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    video = tmp_path / "in.mp4"
    video.write_bytes(bytes(range(251)) * 1500)  # 376,500 bytes: six 64 KiB chunks; content is not decoded
    speech = synth.make_wav(tmp_path / "speech.wav", seconds=1.0, rate=16000)
    background = synth.make_mp3(tmp_path / "bg.mp3", seconds=1.0, rate=16000)
    return {"video": video, "audio": speech, "background": background}


def _kind(request: lipsync_pb2.LipsyncRequest) -> str:
    if request.HasField("config"):
        return "config"
    data = request.input
    for field in ("video_file_data", "audio_file_data", "background_audio_file_data"):
        if data.HasField(field):
            return field
    return "speakers" if len(data.per_frame_speaker_infos) else "empty"


def test_cli_sends_config_then_speaker_batches_then_interleaved_chunks(recording_server, inputs, tmp_path) -> None:
    servicer, target = recording_server
    speakers = tmp_path / "speakers.json"
    frames = [{"speakers": [{"bbox": [1, 2, 30, 40], "face_tracker_id": 7, "is_speaking": i % 2 == 0}],
               "bypass": i == 3} for i in range(5000)]
    speakers.write_text(json.dumps({"frames": frames}))
    output = tmp_path / "out.mp4"
    code = cli.main([
        "--target", target, "--video-input", str(inputs["video"]), "--audio-input", str(inputs["audio"]),
        "--speaker-data-input", str(speakers), "--mix-background-audio",
        "--background-audio-input", str(inputs["background"]), "--background-audio-volume", "0.25",
        "--output", str(output), "--client-session-id", "session-42", "--quiet",
    ])
    assert code == 0
    kinds = [_kind(r) for r in servicer.requests]
    assert kinds[0] == "config"
    config = servicer.requests[0].config
    assert config.input_audio_codec == audio_pb2.AUDIO_CODEC_WAV
    assert config.is_speaker_info_provided
    bg = config.background_audio_config
    assert bg.is_background_audio_provided and bg.audio_codec == audio_pb2.AUDIO_CODEC_MP3
    assert bg.audio_volume == pytest.approx(0.25)

    # Speaker data right after the config, 2,048 frames per message, converted field by field.
    batches = [r.input.per_frame_speaker_infos for r in servicer.requests[1:4]]
    assert kinds[1:4] == ["speakers"] * 3 and [len(b) for b in batches] == [2048, 2048, 904]
    all_frames = [f for b in batches for f in b]
    assert [f.frame_id for f in all_frames] == list(range(5000))
    assert all_frames[3].bypass and not all_frames[4].bypass
    info = all_frames[0].speaker_infos[0]
    box = info.speaker_bbox
    assert (box.x, box.y, box.width, box.height) == (1, 2, 30, 40)
    assert info.speaker_id == 7 and info.is_speaking and not all_frames[1].speaker_infos[0].is_speaking

    # Media: every byte, in order, in chunks of at most 64 KiB, video and audio interleaved.
    assert servicer.media("video_file_data") == inputs["video"].read_bytes()
    assert servicer.media("audio_file_data") == inputs["audio"].read_bytes()
    assert servicer.media("background_audio_file_data") == inputs["background"].read_bytes()
    media = [r for r in servicer.requests[4:]]
    assert all(len(getattr(r.input, _kind(r))) <= CHUNK for r in media)
    first_audio = kinds.index("audio_file_data")
    last_video = len(kinds) - 1 - kinds[::-1].index("video_file_data")
    assert first_audio < last_video, "audio must not wait until all video is sent"

    assert servicer.metadata.get("client-session-id") == "session-42"
    assert output.read_bytes() == servicer.reply


def test_cli_custom_encoding_params_become_protobuf_wrappers(recording_server, inputs, tmp_path) -> None:
    servicer, target = recording_server
    params = {"preset": "fast", "crf": 18, "max_bitrate_mbps": 2.5, "flag": True}
    code = cli.main(["--target", target, "--video-input", str(inputs["video"]), "--audio-input",
                     str(inputs["audio"]), "--output", str(tmp_path / "o.mp4"), "--quiet",
                     "--custom-encoding-params", json.dumps(params), "--output-audio-codec", "MP3",
                     "--extend-video", "reverse", "--head-movement-speed", "1"])
    assert code == 0
    config = servicer.requests[0].config
    custom = config.output_video_encoding.custom_encoding.custom
    assert custom["preset"].Is(wrappers_pb2.StringValue.DESCRIPTOR)
    assert custom["crf"].Is(wrappers_pb2.Int32Value.DESCRIPTOR)
    assert custom["max_bitrate_mbps"].Is(wrappers_pb2.FloatValue.DESCRIPTOR)
    assert custom["flag"].Is(wrappers_pb2.BoolValue.DESCRIPTOR)
    value = wrappers_pb2.Int32Value()
    custom["crf"].Unpack(value)
    assert value.value == 18
    assert config.output_audio_codec == audio_pb2.AUDIO_CODEC_MP3
    assert config.extend_video == lipsync_pb2.EXTEND_VIDEO_REVERSE
    assert config.head_movement_speed == 1


def test_cli_failure_prints_status_exits_nonzero_and_deletes_partial_output(
    recording_server, inputs, tmp_path, capsys
) -> None:
    servicer, target = recording_server
    servicer.fail = (grpc.StatusCode.INVALID_ARGUMENT, "video: not an MP4 file (no ftyp box)")
    output = tmp_path / "out.mp4"
    code = cli.main(["--target", target, "--video-input", str(inputs["video"]),
                     "--audio-input", str(inputs["audio"]), "--output", str(output)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_CALL_FAILED
    assert "INVALID_ARGUMENT" in err and "video: not an MP4 file (no ftyp box)" in err
    assert not output.exists(), "half of the reply had been written; it must be removed"


def test_cli_unreachable_server_is_a_clean_failure(inputs, tmp_path, capsys) -> None:
    output = tmp_path / "out.mp4"
    code = cli.main(["--target", "127.0.0.1:1", "--video-input", str(inputs["video"]), "--audio-input",
                     str(inputs["audio"]), "--output", str(output), "--timeout", "5", "--quiet"])
    assert code == cli.EXIT_CALL_FAILED
    assert "UNAVAILABLE" in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ssl-mode", "mtls", "--ssl-cert", "/nonexistent/client.crt", "--ssl-key", "/nonexistent/k"],
         "cannot read client private key"),
        (["--ssl-mode", "MTLS"], "--ssl-key"),
        (["--mix-background-audio"], "--background-audio-input"),
        (["--lossless", "--bitrate", "5"], "cannot be combined"),
    ],
)
def test_cli_unusable_arguments_exit_2_naming_the_flag(inputs, tmp_path, capsys, extra, message) -> None:
    output = tmp_path / "out.mp4"
    code = cli.main(["--video-input", str(inputs["video"]), "--audio-input", str(inputs["audio"]),
                     "--output", str(output), *extra])
    assert code == cli.EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_cli_missing_input_file_is_named(tmp_path, capsys) -> None:
    code = cli.main(["--video-input", str(tmp_path / "nope.mp4"), "--audio-input", str(tmp_path / "a.wav")])
    assert code == cli.EXIT_USAGE
    assert "--video-input" in capsys.readouterr().err


def test_ssl_mode_accepts_any_case() -> None:
    args = cli.build_parser().parse_args(["--ssl-mode", "tls", "--video-input", "v", "--audio-input", "a"])
    assert args.ssl_mode == "TLS"
    assert channels.normalize_ssl_mode("mTlS") == "MTLS"


def test_paced_upload_takes_the_requested_time(inputs) -> None:
    started = time.monotonic()
    requests = list(stream.build_requests(None, inputs["video"], inputs["audio"], upload_seconds=1.0))
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 3.0
    assert _kind(requests[0]) != "config", "no config given: the server uses its defaults"


def test_progress_counts_bytes_both_ways(recording_server, inputs) -> None:
    servicer, target = recording_server
    seen: list[stream.Progress] = []
    with channels.create_channel(target) as channel:
        result = stream.collect(stream.lipsync(
            lipsync_pb2_grpc.LipSyncServiceStub(channel), lipsync_pb2.LipsyncConfig(), inputs["video"],
            inputs["audio"], on_progress=lambda p: seen.append(
                stream.Progress(p.bytes_total, p.bytes_sent, p.bytes_received, p.upload_done))))
    total = inputs["video"].stat().st_size + inputs["audio"].stat().st_size
    assert seen[-1].bytes_sent == seen[-1].bytes_total == total
    assert seen[-1].bytes_received == len(servicer.reply) == len(result.video)
    assert result.order[:2] == ["service_info", "config"] and result.keepalives == 1


def test_speaker_json_round_trips_to_wire_messages() -> None:
    doc = {"frames": [{"speakers": [{"bbox": [0, 0, 0, 0], "speaker_id": 2}]}, {"speakers": []}]}
    messages = stream.speaker_info_messages(frames_from_json(doc))
    assert [m.frame_id for m in messages] == [0, 1]
    assert messages[0].speaker_infos[0].speaker_id == 2 and not messages[0].speaker_infos[0].is_speaking
    assert len(messages[1].speaker_infos) == 0 and not messages[1].HasField("bypass")


# Against the real in-process server ---------------------------------------------------------------

@pytest.fixture(scope="module")
def real_server():
    from tests.functional.helpers import running_server

    with running_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("client-media")
    return {
        "video": synth.make_video(folder / "in.mp4", seconds=2.0, fps=25, size=(96, 64), layout="faststart"),
        "transactional": synth.make_video(folder / "tx.mp4", seconds=1.2, fps=25, size=(96, 64),
                                          layout="transactional"),
        "audio": synth.make_wav(folder / "speech.wav", seconds=2.0, rate=22050, channels=2),
        "mp3": synth.make_mp3(folder / "speech.mp3", seconds=1.2, rate=16000),
        "background": synth.make_wav(folder / "bg.wav", seconds=2.0, rate=22050, kind="noise"),
        # Long enough that the server's first fragment is written before the clip's end.
        "long_video": synth.make_video(folder / "long.mp4", seconds=8.0, fps=25, layout="faststart"),
        "long_audio": synth.make_wav(folder / "long.wav", seconds=8.0),
    }


def test_cli_against_the_server_writes_a_playable_mp4(real_server, clip, tmp_path, capsys) -> None:
    output = tmp_path / "out.mp4"
    code = cli.main([
        "--target", real_server.target, "--video-input", str(clip["video"]), "--audio-input", str(clip["audio"]),
        "--background-audio-input", str(clip["background"]), "--mix-background-audio",
        "--background-audio-volume", "0.3", "--output-audio-codec", "mp3", "--client-session-id", "cli-test",
        "--output", str(output),
    ])
    err = capsys.readouterr().err
    assert code == 0, err
    info = synth.probe(output)
    assert info["frame_count"] == 50 and info["video_codec"] == "h264" and info["audio_codec"].startswith("mp3")
    assert [synth.read_frame_number(f.to_ndarray(format="rgb24")) for f in synth.decode_frames(output)[:3]] == [0, 1, 2]
    assert "server request id" in err and f"wrote {output}" in err


def test_cli_transactional_mp3_with_realtime_pacing(real_server, clip, tmp_path) -> None:
    output = tmp_path / "out.mp4"
    started = time.monotonic()
    code = cli.main([
        "--target", real_server.target, "--video-input", str(clip["transactional"]), "--audio-input",
        str(clip["mp3"]), "--output", str(output), "--realtime", "--quiet", "--lossless",
    ])
    assert code == 0
    assert time.monotonic() - started >= 1.0, "--realtime spreads the upload over the clip's 1.2 s"
    info = synth.probe(output)
    assert abs(info["frame_count"] - 30) <= 1


def test_cli_server_error_exits_nonzero_with_the_message_and_no_output(real_server, clip, tmp_path, capsys) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not an mp4 file" * 4000)
    output = tmp_path / "out.mp4"
    code = cli.main(["--target", real_server.target, "--video-input", str(garbage), "--audio-input",
                     str(clip["audio"]), "--output", str(output), "--quiet"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_CALL_FAILED
    assert "INVALID_ARGUMENT" in err
    message = err.split("INVALID_ARGUMENT:", 1)[1].strip()
    assert len(message) > 10, f"the server's message is printed: {err!r}"
    assert not output.exists()


def test_cli_bitrate_zero_is_refused_by_the_server(real_server, clip, tmp_path, capsys) -> None:
    output = tmp_path / "out.mp4"
    code = cli.main(["--target", real_server.target, "--video-input", str(clip["video"]), "--audio-input",
                     str(clip["audio"]), "--output", str(output), "--bitrate", "0", "--quiet"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_CALL_FAILED
    assert "INVALID_ARGUMENT" in err and "bitrate" in err
    assert not output.exists()


def test_stream_api_echoes_the_session_id(real_server, clip) -> None:
    with channels.create_channel(real_server.target) as channel:
        result = stream.collect(stream.lipsync(
            lipsync_pb2_grpc.LipSyncServiceStub(channel),
            lipsync_pb2.LipsyncConfig(input_audio_codec=audio_pb2.AUDIO_CODEC_WAV),
            clip["video"].read_bytes(), clip["audio"].open("rb"),
            metadata=channels.call_metadata("abc-123"), timeout=60))
    assert result.service_info.client_session_id == "abc-123"
    assert result.service_info.server_request_id and result.config.input_audio_codec == audio_pb2.AUDIO_CODEC_WAV
    assert synth.probe(result.video)["frame_count"] == 50


def test_paced_upload_of_a_streamable_clip_gets_output_before_the_upload_ends(real_server, clip) -> None:
    states = []

    def on_progress(p: stream.Progress) -> None:
        states.append((p.bytes_received, p.upload_done))

    with channels.create_channel(real_server.target) as channel:
        result = stream.collect(stream.lipsync(
            lipsync_pb2_grpc.LipSyncServiceStub(channel),
            lipsync_pb2.LipsyncConfig(input_audio_codec=audio_pb2.AUDIO_CODEC_WAV),
            clip["long_video"], clip["long_audio"], upload_seconds=3.0, chunk_bytes=4 * 1024,
            on_progress=on_progress, timeout=60))
    assert synth.probe(result.video)["frame_count"] == 200
    first_output = next(i for i, (received, _) in enumerate(states) if received > 0)
    assert not states[first_output][1], "the first output chunk arrived only after the whole upload"


def test_abandoning_the_response_iterator_cancels_the_call_and_frees_the_slot(real_server, clip) -> None:
    from tests.functional.helpers import wait_until

    with channels.create_channel(real_server.target) as channel:
        responses = stream.lipsync(
            lipsync_pb2_grpc.LipSyncServiceStub(channel),
            lipsync_pb2.LipsyncConfig(input_audio_codec=audio_pb2.AUDIO_CODEC_WAV),
            clip["long_video"], clip["long_audio"], upload_seconds=30.0, timeout=60)
        first = next(responses)
        assert first.WhichOneof("lipsync_response") == "service_info"
        assert wait_until(lambda: real_server.server.admission.active == 1, timeout=5)
        responses.close()
        assert wait_until(lambda: real_server.server.admission.active == 0, timeout=3), (
            "the server still holds the slot of an abandoned call")


# What the server says at the end of a call: trailing metadata ----------------------------------------------

@pytest.fixture(scope="module")
def neural_server():
    from lipsync_service.settings import Settings
    from tests.functional.helpers import running_server

    settings = Settings()
    if not any((settings.model_repository / settings.model_name).glob("*/model.onnx")):
        pytest.skip("no generator model.onnx in the model repository")
    with running_server(processor="neural", backend="onnxruntime", model_version="", debug_mode=False) as srv:
        yield srv


def test_cli_summary_counts_frames_without_a_face_and_names_the_flag_for_cut_speech(
    neural_server, clip, tmp_path, capsys, caplog
) -> None:
    import logging

    speech = synth.make_wav(tmp_path / "speech.wav", seconds=3.0)
    output = tmp_path / "out.mp4"
    with caplog.at_level(logging.INFO, logger="lipsync_service.server.session"):
        code = cli.main(["--target", neural_server.target, "--video-input", str(clip["video"]),
                         "--audio-input", str(speech), "--output", str(output)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"wrote {output} ({output.stat().st_size} bytes): 50 frames, 50 without a face\n" in err
    assert "note: no face found in 50 of 50 frames: they are unchanged\n" in err
    assert ("note: 1.00 s of speech cut: the speech is longer than the video; "
            "pass --extend-video forward|reverse to keep it\n") in err
    finished = [json.loads(r.getMessage()) for r in caplog.records if '"request_finished"' in r.getMessage()]
    assert finished, "the server logged its request_finished line"
    assert finished[-1]["frames_without_face"] == 50 and finished[-1]["frames_not_lipsynced"] == 0
    assert finished[-1]["cut"] == "speech" and finished[-1]["cut_s"] == pytest.approx(1.0, abs=0.01)


def test_trailing_metadata_keys_on_the_wire(neural_server, clip, tmp_path) -> None:
    speech = synth.make_wav(tmp_path / "speech.wav", seconds=1.0)
    config = lipsync_pb2.LipsyncConfig(input_audio_codec=audio_pb2.AUDIO_CODEC_WAV)
    with channels.create_channel(neural_server.target) as channel:
        call = lipsync_pb2_grpc.LipSyncServiceStub(channel).Lipsync(
            stream.build_requests(config, clip["video"], speech), timeout=60)
        for _ in call:
            pass
        trailers = list(call.trailing_metadata())
    keys = dict(trailers)
    assert keys["lipsync-frames"] == "25" and keys["lipsync-frames-without-face"] == "25"
    assert keys["lipsync-frames-not-lipsynced"] == "0" and keys["lipsync-frames-bypassed"] == "0"
    assert keys["lipsync-video-cut-s"] == "1.000" and "lipsync-speech-cut-s" not in keys
    notices = [value for key, value in trailers if key == "lipsync-notice"]
    assert notices == [
        "no face found in 25 of 25 frames: they are unchanged",
        "1.00 s of video cut: the video is longer than the speech; pass --extend-audio silence to keep it",
    ]


def test_stream_api_hands_over_the_summary_and_claims_no_faces_for_a_passthrough_server(real_server, clip) -> None:
    summaries: list[stream.CallSummary] = []
    with channels.create_channel(real_server.target) as channel:
        stream.collect(stream.lipsync(
            lipsync_pb2_grpc.LipSyncServiceStub(channel),
            lipsync_pb2.LipsyncConfig(input_audio_codec=audio_pb2.AUDIO_CODEC_WAV),
            clip["video"], clip["audio"], on_summary=summaries.append, timeout=60))
    assert summaries == [stream.CallSummary(frames=50, frames_bypassed=0)]
