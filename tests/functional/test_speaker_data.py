"""Speaker data through the real server: frames past the video refused before any output when the header states
the count, and the same data for every frame whatever the timing of the client's batches."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
import pytest

from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2
from lipsync_service.core.factory import ProcessorFactory
from lipsync_service.core.processor import PassThroughProcessor
from lipsync_service.media.types import FrameJob
from lipsync_service.speakers import FrameSpeakers
from tests import synth
from tests.functional.helpers import (
    ServerThread,
    config,
    requests,
    server_settings,
    speaker_msg,
)

# 4 s at 25 fps, 320x240, an IDR every 5 frames: ~140 kB, so the header is parsed long before the upload ends.
FRAMES = 100


def _clip(path: Path, layout: synth.Layout) -> Path:
    return synth.make_video(path, seconds=4.0, size=(320, 240), layout=layout, gop=5)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("speakers")
    return {
        "faststart": _clip(d / "f.mp4", "faststart").read_bytes(),
        "transactional": _clip(d / "t.mp4", "transactional").read_bytes(),
        "fragmented": _clip(d / "g.mp4", "fragmented").read_bytes(),
        "audio": synth.make_wav(d / "a.wav", seconds=4.0).read_bytes(),
    }


def _frame(frame_id: int) -> lipsync_pb2.SpeakerInfoPerFrame:
    msg = lipsync_pb2.SpeakerInfoPerFrame(frame_id=frame_id)
    info = msg.speaker_infos.add()
    info.speaker_bbox.x, info.speaker_bbox.y, info.speaker_bbox.width, info.speaker_bbox.height = 10, 10, 40, 40
    info.speaker_id = 1
    info.is_speaking = True
    return msg


class Outcome:
    """What a call returned: video bytes received before the status, the status, and whether it came early."""

    def __init__(self) -> None:
        self.video_bytes = 0
        self.code = grpc.StatusCode.OK
        self.details = ""
        self.ended = threading.Event()  # set when the response stream ended
        self.half_closed = False  # the client had half-closed when the status arrived


def _call(srv: ServerThread, messages: Iterable[lipsync_pb2.LipsyncRequest | float], *, hold_s: float = 0.0,
          timeout: float = 60) -> Outcome:
    """Run a call; with hold_s the client keeps its sending side open that long after the last message
    (until the status arrives), so a status received meanwhile came before half-close."""
    outcome = Outcome()

    def reqs() -> Iterator[lipsync_pb2.LipsyncRequest]:
        for item in messages:
            if isinstance(item, lipsync_pb2.LipsyncRequest):
                yield item
            else:
                time.sleep(item)  # a pause the test asked for
        if hold_s:
            outcome.ended.wait(hold_s)
        outcome.half_closed = not outcome.ended.is_set()

    with srv.channel() as channel:
        try:
            for response in srv.stub(channel).Lipsync(reqs(), timeout=timeout):
                if response.WhichOneof("lipsync_response") == "video_file_data":
                    outcome.video_bytes += len(response.video_file_data)
        except grpc.RpcError as err:
            outcome.code, outcome.details = err.code(), err.details() or ""
        finally:
            outcome.ended.set()
    return outcome


def _media(video: bytes, audio: bytes) -> list[lipsync_pb2.LipsyncRequest]:
    return list(requests(video, audio))


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    srv = ServerThread(server_settings()).start()
    try:
        yield srv
    finally:
        srv.stop()


# Frames past the video's end -----------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["faststart", "transactional"])
def test_speaker_data_past_the_last_frame_fails_before_any_output(server, media, layout):
    # Frames 0..99 described plus frame 105 of a 100-frame clip whose header states its count: refused as soon as
    # the header is read, before a single output byte (before: after the whole clip was streamed back).
    batch = speaker_msg([_frame(i) for i in range(FRAMES)] + [_frame(FRAMES + 5)])
    hold = 20.0 if layout == "faststart" else 0.0  # a spooled video is only read after half-close
    outcome = _call(server, [config(is_speaker_info_provided=True), batch, *_media(media[layout], media["audio"])],
                    hold_s=hold)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome.details
    assert outcome.details == "speaker data: frame_id 105 is out of range: the video has 100 frames"
    assert outcome.video_bytes == 0
    if layout == "faststart":
        assert not outcome.half_closed, "the status came while the client was still sending"


def test_a_bad_batch_after_the_header_fails_on_arrival(server, media):
    # The whole video and speech first; the job reads the header and waits for frame 0's speaker data. The batch
    # then names frame 105: refused on arrival, the client still sending, no output written.
    reqs: list[lipsync_pb2.LipsyncRequest | float] = [
        config(is_speaker_info_provided=True), *_media(media["faststart"], media["audio"]), 1.5,
        speaker_msg([_frame(i) for i in range(FRAMES)] + [_frame(FRAMES + 5)])]
    outcome = _call(server, reqs, hold_s=20.0)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome.details
    assert outcome.details == "speaker data: frame_id 105 is out of range: the video has 100 frames"
    assert outcome.video_bytes == 0
    assert not outcome.half_closed


def test_a_bad_batch_after_output_started_fails_at_once(server, media):
    # Frames 0..19 first: output starts. A later batch naming frame 105 fails the call on arrival, long before
    # the client half-closes.
    reqs: list[lipsync_pb2.LipsyncRequest | float] = [
        config(is_speaker_info_provided=True), speaker_msg([_frame(i) for i in range(20)]),
        *_media(media["faststart"], media["audio"]), 1.5, speaker_msg([_frame(20), _frame(FRAMES + 5)])]
    outcome = _call(server, reqs, hold_s=20.0)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome.details
    assert outcome.details == "speaker data: frame_id 105 is out of range: the video has 100 frames"
    assert not outcome.half_closed


def test_fragmented_video_states_no_count_and_is_checked_at_its_end(server, media):
    # A fragmented MP4's header has no frame count: the check runs once the video has ended (today's behaviour),
    # so output was already streamed when the status comes.
    batch = speaker_msg([_frame(i) for i in range(FRAMES)] + [_frame(FRAMES + 5)])
    outcome = _call(server, [config(is_speaker_info_provided=True), batch, *_media(media["fragmented"],
                                                                                  media["audio"])])
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome.details
    assert outcome.details == "speaker data: frame_id 105 is out of range: the video has 100 frames"
    assert outcome.video_bytes > 0


# Speaker data that ends before the video -------------------------------------------------------------

class RecordingProcessor(PassThroughProcessor):
    def __init__(self, seen: dict[int, FrameSpeakers | None]) -> None:
        self.seen = seen

    def push(self, job: FrameJob) -> list[FrameJob]:
        self.seen[job.source_index] = job.speakers
        return [job]


def test_frames_after_the_data_ends_are_automatic_when_batches_come_after_the_video_slowly(media):
    # The client sends video and speech first, then the speaker data for frames 0..59 of 100 in slow batches of
    # 8, then half-closes. Every frame 60..99 reaches the processor with no data (automatic mode), none is
    # bypassed, and frames 0..59 carry their own data.
    runs: list[dict[int, FrameSpeakers | None]] = []

    def build(settings):  # noqa: ANN001, ANN202 - ProcessorFactory's build callable
        runs.append({})
        return RecordingProcessor(runs[-1])

    settings = server_settings()
    srv = ServerThread(settings, processors=ProcessorFactory(settings, build)).start()
    try:
        batches: list[lipsync_pb2.LipsyncRequest | float] = []
        for start in range(0, 60, 8):
            batches += [0.1, speaker_msg([_frame(i) for i in range(start, min(start + 8, 60))])]
        reqs = [config(is_speaker_info_provided=True), *_media(media["faststart"], media["audio"]), *batches, 0.3]
        outcome = _call(srv, reqs)
    finally:
        srv.stop()
    assert outcome.code == grpc.StatusCode.OK, outcome.details
    seen = runs[-1]
    assert sorted(seen) == list(range(FRAMES))
    for i in range(60):
        data = seen[i]
        assert data is not None and data.frame_id == i and data.speakers, i
    assert all(seen[i] is None for i in range(60, FRAMES))

