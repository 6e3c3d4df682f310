"""Hard footage through the real server: a cut between two people and a speaker box holding no face end with OK,
and the call's trailing metadata says how many shots there were and which face was re-drawn where and why."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lipsync_service._proto.nvidia.ai4m.audio.v1 import audio_pb2
from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2, lipsync_pb2_grpc
from lipsync_service.client import channel as channels
from lipsync_service.client import stream
from lipsync_service.settings import Settings
from tests import footage
from tests.conftest import media_path
from tests.functional.helpers import ServerThread, running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def neural_server() -> Iterator[ServerThread]:
    settings = Settings()
    if not any((settings.model_repository / settings.model_name).glob("*/model.onnx")):
        pytest.skip("no generator model.onnx in the model repository")
    with running_server(processor="neural", backend="onnxruntime", model_version="", debug_mode=False) as srv:
        yield srv


def _call(srv: ServerThread, video: Path, speech: Path,
          speakers: list[lipsync_pb2.SpeakerInfoPerFrame] | None = None) -> tuple[bytes, dict[str, list[str]]]:
    cfg = lipsync_pb2.LipsyncConfig(input_audio_codec=audio_pb2.AUDIO_CODEC_WAV,
                                    is_speaker_info_provided=speakers is not None)
    with channels.create_channel(srv.target) as channel:
        call = lipsync_pb2_grpc.LipSyncServiceStub(channel).Lipsync(
            stream.build_requests(cfg, video, speech, speakers=speakers or ()), timeout=300)
        data = b"".join(r.video_file_data for r in call if r.WhichOneof("lipsync_response") == "video_file_data")
        trailers: dict[str, list[str]] = {}
        for key, value in call.trailing_metadata():
            trailers.setdefault(key, []).append(value if isinstance(value, str) else value.decode())
    return data, trailers


def test_a_cut_between_two_people_is_served_as_two_shots(neural_server, tmp_path) -> None:
    first = footage.load(media_path("talking_1.mp4"), seconds=2.0, size=(320, 320))
    second = footage.load(media_path("talking_3.mp4"), seconds=2.0, size=(320, 320))
    video = footage.write(footage.cut([first, second], (320, 320)), tmp_path / "cut.mp4")
    speech = footage.write_wav(footage.load(media_path("talking_2.mp4"), seconds=5.0).audio, 16000,
                               tmp_path / "speech.wav")
    data, trailers = _call(neural_server, video, speech)
    assert data[4:8] == b"ftyp"
    assert trailers["lipsync-shots"] == ["2"]
    faces = [line.split(": ")[1].split(" ")[0] for line in trailers["lipsync-redrawn"]]
    assert len(set(faces)) >= 2, trailers["lipsync-redrawn"]


def test_a_speaker_box_holding_no_face_is_counted_not_an_error(neural_server, tmp_path) -> None:
    clip = footage.load(media_path("talking_3.mp4"), seconds=1.0, size=(320, 320))
    video = footage.write(clip, tmp_path / "in.mp4")
    speech = footage.write_wav(footage.load(media_path("talking_2.mp4"), seconds=5.0).audio, 16000,
                               tmp_path / "speech.wav")
    frame = lipsync_pb2.SpeakerInfoPerFrame(frame_id=0)
    info = frame.speaker_infos.add()
    info.speaker_bbox.x, info.speaker_bbox.y, info.speaker_bbox.width, info.speaker_bbox.height = 0, 0, 50, 50
    info.speaker_id, info.is_speaking = 1, True
    data, trailers = _call(neural_server, video, speech, speakers=[frame])
    assert data[4:8] == b"ftyp"
    assert any("could not be read" in n for n in trailers.get("lipsync-notice", [])), trailers
