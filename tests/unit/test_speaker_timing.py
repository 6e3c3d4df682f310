"""Speaker data: each frame decided once whatever the timing of the batches; frames past the video's count refused."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from lipsync_service.core.processor import PassThroughProcessor
from lipsync_service.errors import InputTimeout, InvalidInput
from lipsync_service.job import AudioCodec, EncodingMode, ExtendVideo, JobConfig, VideoEncodingSpec
from lipsync_service.media.audio import AudioTrack
from lipsync_service.media.types import FrameJob
from lipsync_service.pipeline import Job, JobInputs
from lipsync_service.settings import Settings
from lipsync_service.speakers import FrameSpeakers, SpeakerBox, SpeakerData
from tests import synth

SETTINGS = Settings()
FRAMES = 50  # the clip: 2 s at 25 fps
DESCRIBED = 30  # the client describes frames 0..29 only
BYPASS = {4, 9, 17, 29}


def _frame(i: int) -> FrameSpeakers:
    if i in BYPASS:
        return FrameSpeakers(frame_id=i, bypass=True)
    return FrameSpeakers(frame_id=i, speakers=(SpeakerBox(8, 8, 20, 20, speaker_id=1, is_speaking=True),))


# SpeakerData ---------------------------------------------------------------------------------------

def test_a_frame_without_data_is_undecided_until_a_later_frame_or_the_end():
    data = SpeakerData()
    data.add_all([_frame(0), _frame(1)])
    assert data.wait_for(1, timeout=0) is not None
    with pytest.raises(InputTimeout):
        data.wait_for(2, timeout=0.01)  # nothing for frame 2 or later yet, input open: not decided
    data.add(_frame(5))
    assert data.wait_for(2, timeout=0) is None  # frame 5 came first: frame 2 has none
    with pytest.raises(InputTimeout):
        data.wait_for(6, timeout=0.01)
    data.close()
    assert data.wait_for(6, timeout=0) is None


def test_a_batch_landing_while_a_frame_waits_gives_that_frame_its_data():
    # The decision and the data are taken together: a batch with this frame and later ones never makes the
    # frame count as decided without its data (the old two-step check could, leaving the frame unedited).
    for _ in range(50):
        data = SpeakerData()
        got: list[FrameSpeakers | None] = []

        def wait(d: SpeakerData = data, got: list[FrameSpeakers | None] = got) -> None:
            while True:
                try:
                    got.append(d.wait_for(3, timeout=0.001))
                    return
                except InputTimeout:
                    continue

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(random.uniform(0, 0.003))
        data.add_all([_frame(i) for i in range(3, 10)])
        waiter.join(5)
        assert got and got[0] is not None and got[0].frame_id == 3


def test_a_frame_decided_without_data_keeps_none_when_its_data_comes_late():
    data = SpeakerData()
    data.add(_frame(8))
    assert data.wait_for(5, timeout=0) is None  # decided: no data (frame 8 came first)
    data.add(_frame(5))  # out of order, after the video reached it: ignored for good
    assert data.wait_for(5, timeout=0) is None and data.get(5) is None
    assert data.get(8) is not None


def test_frame_count_refuses_data_received_before_and_after():
    data = SpeakerData()
    data.add_all([_frame(i) for i in range(10)] + [_frame(30)])
    with pytest.raises(InvalidInput, match="^speaker data: frame_id 30 is out of range: the video has 25 frames$"):
        data.set_frame_count(25)
    ok = SpeakerData()
    ok.add_all([_frame(i) for i in range(10)])
    ok.set_frame_count(25)
    with pytest.raises(InvalidInput, match="^speaker data: frame_id 29 is out of range: the video has 25 frames$"):
        ok.add_all([_frame(i) for i in range(10, 25)] + [_frame(29)])
    assert len(ok) == 10, "a refused batch adds nothing"
    ok.add_all([_frame(i) for i in range(10, 25)])
    assert len(ok) == 25


def test_a_batch_with_a_bad_frame_adds_nothing():
    data = SpeakerData()
    with pytest.raises(InvalidInput, match="frame 3 is given twice"):
        data.add_all([_frame(2), _frame(3), _frame(3)])
    bad = FrameSpeakers(frame_id=4, speakers=(SpeakerBox(1, 1, -2, 5),))
    with pytest.raises(InvalidInput, match="frame 4, speaker 0: bbox width and height must be >= 0"):
        data.add_all([_frame(2), bad])
    assert len(data) == 0 and data.max_frame_id == -1


# The pipeline over a real clip, with batches sent late and slow ------------------------------------

class RecordingProcessor(PassThroughProcessor):
    """Pass-through that records the speaker data each frame it is given had."""

    def __init__(self) -> None:
        self.seen: dict[int, FrameSpeakers | None] = {}
        self.sources: dict[int, int] = {}

    def push(self, job: FrameJob) -> list[FrameJob]:
        self.seen[job.index] = job.speakers
        self.sources[job.index] = job.source_index
        return [job]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("timing")
    return {
        "video": synth.make_video(d / "v.mp4", seconds=2.0, fps=25, size=(64, 64)),
        "speech": synth.make_wav(d / "s.wav", seconds=2.0),
        "long_speech": synth.make_wav(d / "l.wav", seconds=3.0),
    }


def _send(data: SpeakerData, batches: list[list[int]], delays: list[float], close_after: float) -> threading.Thread:
    def run() -> None:
        for batch, delay in zip(batches, delays):
            time.sleep(delay)
            data.add_all([_frame(i) for i in batch])
        time.sleep(close_after)
        data.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _run(media: dict[str, Path], data: SpeakerData, *, speech: str = "speech",
         extend_video: ExtendVideo = ExtendVideo.UNSPECIFIED) -> RecordingProcessor:
    processor = RecordingProcessor()
    cfg = JobConfig(speaker_info_provided=True, extend_video=extend_video,
                    video_encoding=VideoEncodingSpec(mode=EncodingMode.LOSSLESS))
    with open(media[speech], "rb") as f:
        track = AudioTrack(f, AudioCodec.WAV)
        track.start()
        try:
            Job(cfg, SETTINGS, processor, lambda b: None, threading.Event()).run(
                JobInputs(video=media["video"], speech=track, speakers=data))
        finally:
            track.close()
    return processor


def _expected(index: int) -> FrameSpeakers | None:
    return _frame(index) if index < DESCRIBED else None


@pytest.mark.parametrize("timing", ["all_first", "slow_batches", "bursts_then_late_close", "one_by_one"])
def test_every_frame_after_the_data_ends_is_automatic_whatever_the_timing(media, timing):
    # The client describes frames 0..29 of 50; frames 30..49 must each get no data (automatic mode: detect and
    # re-draw the largest face), never bypass, and frames 0..29 exactly their own data, however batches arrive.
    data = SpeakerData()
    described = list(range(DESCRIBED))
    rng = random.Random(timing)
    if timing == "all_first":
        data.add_all([_frame(i) for i in described])
        data.close()
    elif timing == "slow_batches":
        batches = [described[i:i + 7] for i in range(0, DESCRIBED, 7)]
        _send(data, batches, [0.05 + rng.uniform(0, 0.05) for _ in batches], close_after=0.3)
    elif timing == "bursts_then_late_close":
        _send(data, [described[:3], described[3:]], [0.0, 0.2], close_after=0.5)
    else:
        _send(data, [[i] for i in described], [rng.uniform(0, 0.01) for _ in described], close_after=0.2)
    processor = _run(media, data)
    assert sorted(processor.seen) == [i for i in range(FRAMES) if i not in BYPASS], "bypass frames skip it"
    for index, speakers in processor.seen.items():
        assert speakers == _expected(index), index
    assert all(processor.seen[i] is None for i in range(DESCRIBED, FRAMES))


def test_extension_frames_get_the_data_their_input_frame_got(media):
    # 3 s of speech over a 2 s video, extended forward: output frames 50..74 replay input frames 25..49, and
    # each gets exactly what its input frame got in the first pass (frames 30..49: none), with late batches.
    data = SpeakerData()
    described = list(range(DESCRIBED))
    _send(data, [described[:10], described[10:]], [0.05, 0.1], close_after=0.2)
    processor = _run(media, data, speech="long_speech", extend_video=ExtendVideo.FORWARD)
    assert max(processor.seen) == 74
    for index, speakers in processor.seen.items():
        assert speakers == _expected(processor.sources[index]), index
