"""The lip-sync processor on real faces: frames in order, only the mouth region of speaking faces changes."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from lipsync_service.core.blend import write_support
from lipsync_service.core.crops import plane_arrays
from lipsync_service.core.faces import FaceDetector
from lipsync_service.core.neural import NeuralProcessor
from lipsync_service.core.neural import build_neural_processor as build_processor
from lipsync_service.core.processor import drain
from lipsync_service.job import JobConfig
from lipsync_service.media.types import FrameJob, VideoInfo
from lipsync_service.settings import Settings
from lipsync_service.speakers import FrameSpeakers, SpeakerBox
from tests.core.fakes import ArraySpeech, EchoBackend

FPS = Fraction(25)


def _frames(path, count: int) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        out = []
        for frame in container.decode(video=0):
            out.append(frame)
            if len(out) == count:
                break
    return out


@pytest.fixture(scope="module")
def talking_frames():
    from tests.conftest import media_path

    return _frames(media_path("talking_1.mp4"), 24)


def _speech(seconds: float = 3.0, seed: int = 0) -> ArraySpeech:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    env = (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2
    wave = 0.3 * env * np.sin(2 * np.pi * 180 * t) + 0.02 * rng.standard_normal(len(t))
    return ArraySpeech(wave.astype(np.float32))


def _info(frame: av.VideoFrame) -> VideoInfo:
    return VideoInfo(frame.width, frame.height, FPS, "yuv420p", None)


def _jobs(frames, speakers=None) -> list[FrameJob]:
    return [FrameJob(index=i, source_index=i, frame=f, speakers=None if speakers is None else speakers[i])
            for i, f in enumerate(frames)]


def _processor(backend=None, **kwargs) -> NeuralProcessor:
    return NeuralProcessor(backend or EchoBackend(gain=0.4), batch_frames=4, **kwargs)


def _blank() -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(np.full((700, 700, 3), 90, np.uint8), format="rgb24").reformat(format="yuv420p")


def test_every_frame_comes_back_once_in_order(talking_frames):
    frames = talking_frames[:8] + [_blank() for _ in range(4)] + talking_frames[8:16]
    backend = EchoBackend(gain=0.4)
    proc = _processor(backend)
    proc.start(_info(frames[0]), _speech())
    jobs = _jobs(frames)
    out = drain(proc, jobs)
    assert [j.index for j in out] == list(range(len(frames)))
    assert len({id(j) for j in out}) == len(frames)
    assert [j.changed for j in out] == [True] * 8 + [False] * 4 + [True] * 8
    # Unchanged frames are the very objects that went in (the encoder then sees the decoded planes).
    assert all(out[i].frame is frames[i] for i in range(8, 12))
    assert all(out[i].frame is not frames[i] for i in range(8))
    assert max(backend.batches) <= 4


def test_output_flows_with_bounded_latency(talking_frames):
    proc = _processor()
    proc.start(_info(talking_frames[0]), _speech())
    held_max = 0
    returned = 0
    for k, job in enumerate(_jobs(talking_frames)):
        returned += len(proc.push(job))
        held_max = max(held_max, k + 1 - returned)
    returned += len(proc.flush())
    assert returned == len(talking_frames)
    assert held_max <= proc.lookahead_frames + 4


def test_pixels_outside_the_blend_mask_are_bit_identical(talking_frames):
    frames = talking_frames[:10]
    originals = [[p.copy() for p in plane_arrays(f)] for f in frames]
    proc = _processor()
    proc.start(_info(frames[0]), _speech())
    out = drain(proc, _jobs(frames))
    for job, planes in zip(out, originals):
        assert job.changed
        luma, chroma = write_support(job.frame.width, job.frame.height, job.meta["lipsync_pastes"])
        assert 0.001 < luma.mean() < 0.08, "the mask covers the mouth and jaw, not the face"
        for k, (before, after) in enumerate(zip(planes, plane_arrays(job.frame))):
            support = luma if k == 0 else chroma
            assert np.array_equal(before[~support], after[~support]), f"frame {job.index} plane {k}"
        assert (planes[0][luma] != plane_arrays(job.frame)[0][luma]).mean() > 0.2
    # The decoded input frames themselves were not written to.
    for f, planes in zip(frames, originals):
        assert all(np.array_equal(a, b) for a, b in zip(plane_arrays(f), planes))


def _two_face_frame(frame: av.VideoFrame) -> av.VideoFrame:
    rgb = frame.to_ndarray(format="rgb24")
    both = np.concatenate([rgb, rgb[:, ::-1]], axis=1)
    return av.VideoFrame.from_ndarray(both, format="rgb24").reformat(format="yuv420p")


def test_with_speaker_data_only_the_speaking_face_changes(talking_frames):
    frames = [_two_face_frame(f) for f in talking_frames[:6]]
    faces = sorted(FaceDetector().detect_frame(frames[0]), key=lambda f: f.box[0])
    assert len(faces) == 2
    half = frames[0].width // 2

    def speakers(i, speaking_left):
        boxes = []
        for sid, face in enumerate(faces, start=1):
            x1, y1, x2, y2 = face.box
            boxes.append(SpeakerBox(x1, y1, x2 - x1, y2 - y1, speaker_id=sid, is_speaking=(sid == 1) == speaking_left))
        return FrameSpeakers(i, tuple(boxes))

    for speaking_left in (True, False):
        originals = [plane_arrays(f)[0].copy() for f in frames]
        proc = _processor()
        proc.configure(JobConfig(speaker_info_provided=True, head_movement_speed=1))
        proc.start(_info(frames[0]), _speech())
        out = drain(proc, _jobs(frames, [speakers(i, speaking_left) for i in range(len(frames))]))
        for job, before in zip(out, originals):
            after = plane_arrays(job.frame)[0]
            left_changed = not np.array_equal(before[:, :half], after[:, :half])
            right_changed = not np.array_equal(before[:, half:], after[:, half:])
            assert (left_changed, right_changed) == (speaking_left, not speaking_left)


def test_debug_overlay_draws_into_every_frame(talking_frames):
    frames = talking_frames[:3] + [_blank()]
    proc = _processor(debug=True)
    proc.start(_info(frames[0]), _speech())
    out = drain(proc, _jobs(frames))
    for job, frame in zip(out, frames):
        assert job.changed
        top = slice(0, 40)
        assert not np.array_equal(plane_arrays(job.frame)[0][top], plane_arrays(frame)[0][top]), "no frame label"


def _real_backend_processor() -> NeuralProcessor:
    settings = Settings()
    model = settings.model_repository / settings.model_name
    if not any(model.glob("*/model.onnx")):
        pytest.skip(f"no generator model.onnx under {model}")
    return build_processor(settings)


def test_mouth_region_changes_when_the_speech_changes(talking_frames):
    """Same frames, different speech -> different pixels in the mouth region (real generator backend)."""
    frames = talking_frames[:8]
    results = []
    for speech in (_speech(seed=1), ArraySpeech(np.zeros(48000, np.float32))):
        proc = _real_backend_processor()
        try:
            proc.start(_info(frames[0]), speech)
            results.append(drain(proc, _jobs(frames)))
        finally:
            proc.close()
    differing = 0
    for a, b in zip(*results):
        luma_a, _ = write_support(a.frame.width, a.frame.height, a.meta["lipsync_pastes"])
        luma_b, _ = write_support(b.frame.width, b.frame.height, b.meta["lipsync_pastes"])
        luma = luma_a | luma_b
        ya, yb = plane_arrays(a.frame)[0], plane_arrays(b.frame)[0]
        assert np.array_equal(ya[~luma], yb[~luma])
        differing += int((ya[luma] != yb[luma]).sum())
    assert differing > 0.01 * luma.sum() * len(frames), "the mouth region ignores the speech"


def test_still_head_gives_a_still_crop_at_speed_0_and_speed_1_follows(media):
    """talking_long_silent.mp4: a talking head that barely moves. Speed 0 keeps the crop still."""
    frames = _frames(media("talking_long_silent.mp4"), 100)
    moves = {}
    for speed in (0, 1):
        proc = _processor()
        proc.configure(JobConfig(head_movement_speed=speed))
        proc.start(_info(frames[0]), _speech(5.0))
        out = drain(proc, _jobs(frames))
        regions = [j.meta["lipsync_regions"][0] for j in out]
        moves[speed] = sum(a != b for a, b in zip(regions, regions[1:]))
    assert moves[0] <= 2, f"the crop moved {moves[0]} times on a still head"
    assert moves[1] > moves[0]


def test_all_zero_speaker_box_is_redrawn_in_every_frame(talking_frames):
    """An all-zero box means "find this speaker yourself": every such frame is re-drawn, cadence or not."""
    frames = talking_frames[:10]
    zero = [FrameSpeakers(i, (SpeakerBox(0, 0, 0, 0, speaker_id=4, is_speaking=True),)) for i in range(10)]
    proc = _processor()
    proc.configure(JobConfig(speaker_info_provided=True, head_movement_speed=0))
    proc.start(_info(frames[0]), _speech())
    out = drain(proc, _jobs(frames, zero))
    assert all(j.changed for j in out)
