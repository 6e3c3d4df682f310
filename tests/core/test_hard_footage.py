"""Footage people actually send, through the offline runner, lossless: cuts between people, faces that leave and
come back, speaker boxes without a face, two people with the smaller one talking, and inputs with no usable face."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import av
import numpy as np
import pytest

from lipsync_service.core.faces import FaceDetector
from lipsync_service.core.landmarks import OUTER_LIPS, FaceLandmarker
from lipsync_service.core.lips import LipTracker
from lipsync_service.core.neural import build_neural_processor
from lipsync_service.job import EncodingMode, JobConfig, VideoEncodingSpec
from lipsync_service.pipeline import JobResult, run_files
from lipsync_service.settings import Settings
from lipsync_service.speakers import FrameSpeakers, SpeakerBox
from tests import footage
from tests.conftest import media_path

pytestmark = pytest.mark.slow

LOSSLESS = dataclasses.replace(JobConfig(), video_encoding=VideoEncodingSpec(mode=EncodingMode.LOSSLESS))


def _clip(name: str, seconds: float, size: tuple[int, int] | None = None) -> footage.Clip:
    return footage.load(media_path(name), seconds=seconds, size=size)


def _planes(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="yuv420p") for f in container.decode(video=0)]


def _run(tmp_path: Path, clip: footage.Clip, speech: np.ndarray, **kwargs) -> tuple[JobResult, list, list]:
    """Lip-sync a composed clip losslessly; (result, input planes, output planes)."""
    video = footage.write(clip, tmp_path / "in.mp4", lossless=True)
    audio = footage.write_wav(speech, 16000, tmp_path / "speech.wav")
    settings = Settings()
    out = tmp_path / "out.mp4"
    result = run_files(LOSSLESS, settings, build_neural_processor(settings), video, audio, out, **kwargs)
    return result, _planes(video), _planes(out)


def _changed_rows_cols(a: np.ndarray, b: np.ndarray, height: int) -> tuple[np.ndarray, np.ndarray]:
    diff = a[:height] != b[:height]
    return np.nonzero(diff.any(axis=1))[0], np.nonzero(diff.any(axis=0))[0]


def test_a_hard_cut_between_two_people_starts_afresh_on_the_second(tmp_path):
    first, second = _clip("talking_1.mp4", 2.4, (384, 384)), _clip("talking_3.mp4", 2.4, (384, 384))
    speech = _clip("talking_2.mp4", 5.0).audio
    clip = footage.cut([first, second], (384, 384))
    cut_at = len(first.frames)
    result, frames_in, frames_out = _run(tmp_path, clip, speech)

    assert result.frames == len(frames_in) == len(frames_out)
    assert result.shots == 2
    # One face before the cut, another after it: the second person is a new face (new lip statistics and mouth
    # bank), never the first one's track carried over.
    before = [r for r in result.redrawn if r.last < cut_at]
    after = [r for r in result.redrawn if r.first >= cut_at]
    assert before and after and len(before) + len(after) == len(result.redrawn)
    assert {r.face for r in before}.isdisjoint({r.face for r in after})
    edited = [i for i, (a, b) in enumerate(zip(frames_in, frames_out)) if not np.array_equal(a, b)]
    assert sum(i < cut_at for i in edited) >= 0.8 * cut_at
    assert sum(i >= cut_at for i in edited) >= 0.8 * (len(frames_in) - cut_at)


def test_a_face_that_leaves_and_comes_back_is_edited_only_where_it_is(tmp_path):
    clip = _clip("talking_3.mp4", 4.0, (320, 320))
    speech = _clip("talking_2.mp4", 5.0).audio
    gone = range(30, 55)
    for i in gone:
        # The person steps out: an empty wall (the picture's top-left corner, stretched) fills the frame.
        clip.frames[i] = np.ascontiguousarray(np.broadcast_to(clip.frames[i][:8, :8].mean(axis=(0, 1)).astype(np.uint8),
                                                              clip.frames[i].shape))
    result, frames_in, frames_out = _run(tmp_path, clip, speech)

    assert result.frames == len(frames_in)
    for i in gone:
        assert np.array_equal(frames_in[i], frames_out[i]), f"frame {i} has no face but was changed"
    assert result.frames_without_face is not None and result.frames_without_face >= len(gone) - 2
    edited_after = sum(not np.array_equal(a, b) for a, b in zip(frames_in[60:], frames_out[60:]))
    assert edited_after >= 0.8 * (len(frames_in) - 60), "the face that came back must be re-drawn again"


def test_a_speaker_box_holding_no_readable_face_leaves_its_frame_unchanged(tmp_path):
    clip = _clip("talking_3.mp4", 2.0, (320, 320))
    speech = _clip("talking_2.mp4", 5.0).audio
    # Speaker data for frame 0 only: one speaking box over the empty top-left corner (no face there).
    speakers = [FrameSpeakers(0, (SpeakerBox(0, 0, 60, 60, speaker_id=7, is_speaking=True),))]
    result, frames_in, frames_out = _run(tmp_path, clip, speech, speakers=speakers)

    assert result.frames == len(frames_in)
    assert np.array_equal(frames_in[0], frames_out[0])
    assert result.frames_kept.get("unreadable", 0) >= 1
    assert any("could not be read" in n for n in result.notices())
    # From frame 1 on there is no data: the service finds the face itself.
    assert sum(not np.array_equal(a, b) for a, b in zip(frames_in[1:], frames_out[1:])) >= 0.8 * (len(frames_in) - 1)


def test_two_people_the_smaller_one_talking_is_the_one_re_drawn(tmp_path):
    talker, listener = _clip("talking_1.mp4", 4.0), _clip("face_static_720p_streamable.mp4", 4.0)
    clip = footage.side_by_side([talker, listener], heights=[240, 340], size=(1024, 384), talker=0)
    speech = _clip("talking_2.mp4", 5.0).audio
    result, frames_in, frames_out = _run(tmp_path, clip, speech)

    h = frames_in[0].shape[0] * 2 // 3
    left, _, width, _ = clip.truth[0]["boxes"][0]
    on_talker = on_listener = 0
    for a, b in zip(frames_in, frames_out):
        _, cols = _changed_rows_cols(a, b, h)
        if cols.size:
            on_talker += int(cols.max() < left + width)
            on_listener += int(cols.min() >= left + width)
    assert on_talker >= 0.9 * len(frames_in)
    assert on_listener == 0
    assert result.redrawn and all(r.why in ("soundtrack sync", "lip motion") for r in result.redrawn)


def test_the_previous_rule_re_draws_the_largest_face(tmp_path, monkeypatch):
    monkeypatch.setenv("NV_AI4M_LS_SPEAKER_CHOICE", "largest")
    talker, listener = _clip("talking_1.mp4", 2.0), _clip("face_static_720p_streamable.mp4", 2.0)
    clip = footage.side_by_side([talker, listener], heights=[240, 340], size=(1024, 384), talker=0)
    result, _, _ = _run(tmp_path, clip, _clip("talking_2.mp4", 5.0).audio)
    assert result.redrawn and {r.why for r in result.redrawn} == {"largest face"}


def _lip_boxes(clip: footage.Clip) -> list[tuple[int, int, int, int]]:
    """Per frame, the outer lips' bounding box (x0, y0, x1, y1) as the service's own face and mesh models read it."""
    detector, tracker = FaceDetector(), LipTracker(FaceLandmarker(), clip.fps)
    boxes = []
    for k, bgr in enumerate(clip.frames):
        frame = av.VideoFrame.from_ndarray(bgr, format="bgr24").reformat(format="yuv420p")
        face = max(detector.detect_frame(frame), key=lambda f: f.area)
        lips = tracker.read(frame, k, 0, face.box)
        assert lips is not None
        pts = lips.raw[list(OUTER_LIPS)]
        (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
        boxes.append((int(x0), int(y0), int(x1) + 1, int(y1) + 1))
    return boxes


def test_a_patch_over_the_mouth_keeps_every_pixel_and_the_edit_fades_around_it(tmp_path):
    # The user's case: a flat skin-coloured patch (a hand, a microphone) over the mouth for one second of a talking
    # head. The shipped occlusion model has to find it: no pixel of the patch may change, and the mouth is re-drawn
    # before and after it.
    clip = _clip("talking_1.mp4", 3.0, (384, 384))
    speech = _clip("talking_2.mp4", 5.0).audio
    lips = _lip_boxes(clip)
    first, last = 25, 50
    patches = {}
    for k in range(first, last):
        x0, y0, x1, y1 = lips[k]
        pad = (x1 - x0) // 4
        x0, y0, x1, y1 = x0 - pad, y0 - pad, x1 + pad, y1 + pad
        cheek = clip.frames[k][y0 - 2 * pad : y0 - pad, x1 : x1 + pad].reshape(-1, 3).mean(0)
        clip.frames[k][y0:y1, x0:x1] = cheek.astype(np.uint8)
        patches[k] = (x0 & ~1, y0 & ~1, (x1 + 1) & ~1, (y1 + 1) & ~1)  # whole chroma samples
    result, frames_in, frames_out = _run(tmp_path, clip, speech)

    h = frames_in[0].shape[0] * 2 // 3
    for k, (x0, y0, x1, y1) in patches.items():
        a, b = frames_in[k], frames_out[k]
        assert np.array_equal(a[y0:y1, x0:x1], b[y0:y1, x0:x1]), f"frame {k}: the patch's luma changed"
        for plane in (h, h + h // 4):  # U then V (yuv420p rows of half width, two per plane row)
            pa = a[plane : plane + h // 4].reshape(h // 2, -1)
            pb = b[plane : plane + h // 4].reshape(h // 2, -1)
            assert np.array_equal(pa[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2], pb[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2])
    assert result.frames_kept.get("mouth covered", 0) >= 0.8 * (last - first)
    edited = {k for k, (a, b) in enumerate(zip(frames_in, frames_out)) if not np.array_equal(a, b)}
    assert len(edited & set(range(0, first - 4))) >= 0.8 * (first - 4)
    assert len(edited & set(range(last + 4, len(frames_in)))) >= 0.8 * (len(frames_in) - last - 4)


@pytest.mark.parametrize("kind", ["random", "still", "no_face", "half_face"])
def test_footage_without_a_usable_face_gives_an_output(tmp_path, kind):
    rng = np.random.default_rng(3)
    size = (256, 256)
    if kind == "random":
        frames = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(40)]
    elif kind == "still":
        frames = [_clip("talking_3.mp4", 0.1, size).frames[0]]
    elif kind == "no_face":
        wall = _clip("talking_3.mp4", 0.1, size).frames[0][:40, :40]
        frames = [np.ascontiguousarray(np.resize(wall, (256, 256, 3)))] * 40
    else:
        # The face cut by the frame's edge: only its right half is in the picture.
        source = _clip("talking_3.mp4", 1.6, (512, 256))
        frames = [f[:, 256 + 64 :][:, :256] if f.shape[1] >= 512 else f for f in source.frames]
        frames = [np.ascontiguousarray(np.pad(f, ((0, 0), (0, 256 - f.shape[1]), (0, 0)), mode="edge")) for f in frames]
    clip = footage.Clip(frames=frames)
    result, frames_in, frames_out = _run(tmp_path, clip, _clip("talking_2.mp4", 5.0).audio)
    assert result.frames == len(frames_in) == len(frames_out)
    if kind in ("random", "no_face"):
        assert all(np.array_equal(a, b) for a, b in zip(frames_in, frames_out))
