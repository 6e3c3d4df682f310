"""The lip-sync core through the offline runner on a real talking clip, encoded losslessly."""

from __future__ import annotations

import dataclasses

import av
import numpy as np
import pytest

from lipsync_service.core.crops import SquareBox
from lipsync_service.core.faces import FaceDetector
from lipsync_service.core.neural import build_neural_processor as build_processor
from lipsync_service.job import EncodingMode, JobConfig, VideoEncodingSpec
from lipsync_service.media.demux import yuv420p_planes
from lipsync_service.pipeline import run_files
from lipsync_service.settings import Settings
from lipsync_service.speakers import FrameSpeakers

pytestmark = pytest.mark.slow


def _decode_planes(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="yuv420p") for f in container.decode(video=0)]


def test_lossless_job_changes_only_the_lower_face_and_keeps_bypass_frames(media, tmp_path):
    video, audio = media("talking_3.mp4"), media("speech_en_2.wav")
    settings = Settings()
    if not any((settings.model_repository / settings.model_name).glob("*/model.onnx")):
        pytest.skip("no generator model.onnx in the model repository")
    cfg = dataclasses.replace(JobConfig(), video_encoding=VideoEncodingSpec(mode=EncodingMode.LOSSLESS))
    frames_in = _decode_planes(video)
    bypass = {3, 4, 20}
    speakers = [FrameSpeakers(i, (), bypass=i in bypass) for i in range(len(frames_in))]
    out = tmp_path / "out.mp4"
    result = run_files(cfg, settings, build_processor(settings), video, audio, out, speakers=speakers)
    frames_out = _decode_planes(out)
    # No frame dropped or duplicated: the shorter input (the 5 s speech or the 5 s video) decides.
    assert len(frames_out) == result.frames
    assert abs(result.frames - min(len(frames_in), round(5.0 * 25))) <= 1

    detector = FaceDetector()
    h = frames_in[0].shape[0] * 2 // 3
    changed = 0
    for i, (a, b) in enumerate(zip(frames_in, frames_out)):
        if i in bypass:
            assert np.array_equal(a, b), f"bypass frame {i} was altered"
            continue
        diff = np.nonzero(a[:h] != b[:h])  # the luma part of the I420 layout
        if diff[0].size == 0:
            continue
        changed += 1
        frame = av.VideoFrame.from_ndarray(a, format="yuv420p")
        face = max(detector.detect_frame(frame), key=lambda f: f.area)
        crop = SquareBox.around_face(face.box)
        # Every changed luma sample lies in the lower half of the face's crop square (with tracking slack).
        slack = 0.1 * crop.side
        assert diff[0].min() >= crop.cy - slack, f"frame {i}: a pixel above the mouth region changed"
        assert diff[0].max() <= crop.cy + crop.side / 2 + slack
        assert diff[1].min() >= crop.cx - crop.side / 2 - slack
        assert diff[1].max() <= crop.cx + crop.side / 2 + slack
    assert changed >= 0.95 * (len(frames_out) - len(bypass)), "most frames must be re-drawn"


def _write_sideways(frames: list[np.ndarray], fps, path) -> None:
    """Frames stored turned a quarter counter-clockwise with a display matrix that turns them back (as phones do)."""
    h, w = frames[0].shape[0] * 2 // 3, frames[0].shape[1]
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps, options={"qp": "0"})
        stream.width, stream.height, stream.pix_fmt = h, w, "yuv420p"
        stream.set_display_rotation(-90)
        for i, flat in enumerate(frames):
            turned = [np.rot90(p, 1) for p in yuv420p_planes(flat, w, h)]
            frame = av.VideoFrame.from_ndarray(np.concatenate([p.reshape(-1) for p in turned]).reshape(w * 3 // 2, h),
                                               format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def test_a_sideways_phone_video_is_lip_synced_upright(media, tmp_path):
    video, audio = media("talking_3.mp4"), media("speech_en_2.wav")
    settings = Settings()
    if not any((settings.model_repository / settings.model_name).glob("*/model.onnx")):
        pytest.skip("no generator model.onnx in the model repository")
    with av.open(str(video)) as container:
        fps = container.streams.video[0].average_rate
    frames_in = _decode_planes(video)[:50]
    sideways = tmp_path / "sideways.mp4"
    _write_sideways(frames_in, fps, sideways)
    cfg = dataclasses.replace(JobConfig(), video_encoding=VideoEncodingSpec(mode=EncodingMode.LOSSLESS))
    out = tmp_path / "out.mp4"
    run_files(cfg, settings, build_processor(settings), sideways, audio, out)
    with av.open(str(out)) as container:
        decoded = list(container.decode(video=0))
    # Upright pictures and no rotation left for the player to apply.
    assert len(decoded) == len(frames_in)
    assert all(f.rotation == 0 and (f.width, f.height) == (frames_in[0].shape[1], frames_in[0].shape[0] * 2 // 3)
               for f in decoded)
    h = frames_in[0].shape[0] * 2 // 3
    changed = 0
    for a, f in zip(frames_in, decoded):
        b = f.to_ndarray(format="yuv420p")
        rows = np.nonzero((a[:h] != b[:h]).any(axis=1))[0]
        if rows.size:
            changed += 1
            # Only the lower part of the picture (the mouth of the upright face) is re-drawn.
            assert rows.min() > h * 0.35, "pixels above the mouth changed: the face was not processed upright"
    assert changed >= 0.9 * len(frames_in), "the upright face must be found and re-drawn in most frames"
