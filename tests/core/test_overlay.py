"""The debug overlay, checked by pixel on a plain grey frame: labels top centre, the activation box in the
colour of the lip-sync state at its coordinates, white speaker boxes."""

from __future__ import annotations

import av
import numpy as np
import pytest

from lipsync_service.core.blend import Paste
from lipsync_service.core.crops import CropRegion, SquareBox, plane_arrays
from lipsync_service.core.overlay import BypassOverlay, SpeakerMark, annotate, draw_overlay
from lipsync_service.media.types import FrameJob
from lipsync_service.speakers import FrameSpeakers, SpeakerBox

W, H = 320, 240
GREY = 128


def _frame() -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(np.full((H, W, 3), GREY, np.uint8), format="bgr24").reformat(format="yuv420p")
    frame.pts = 7
    return frame


def _bgr(frame: av.VideoFrame) -> np.ndarray:
    assert frame.format.name == "yuv420p"
    return frame.to_ndarray(format="bgr24").astype(int)


def _is_white(px: np.ndarray) -> bool:
    return bool(min(px) > 200)


def _is_green(px: np.ndarray) -> bool:
    b, g, r = px
    return bool(g > 110 and g > r + 50 and g > b + 50)


def _is_red(px: np.ndarray) -> bool:
    b, g, r = px
    return bool(r > 110 and r > g + 50 and r > b + 50)


def _labels(img: np.ndarray) -> tuple[range, range]:
    """Rows of the white label and of the coloured label below it, along the centre column."""
    column = img[:80, W // 2]
    white = [y for y in range(len(column)) if _is_white(column[y])]
    coloured = [y for y in range(len(column)) if _is_green(column[y]) or _is_red(column[y])]
    assert white and coloured, "both labels cross the centre column"
    return range(white[0], white[-1] + 1), range(coloured[0], coloured[-1] + 1)


def _check_top_labels(img: np.ndarray, is_colour) -> None:
    white, coloured = _labels(img)
    assert white.start < 10, "the frame-number label is at the top"
    # Centred: the white background reaches as far left of the centre as right of it.
    row = img[white.start + 1]
    left = right = W // 2
    while left > 0 and _is_white(row[left - 1]):
        left -= 1
    while right < W - 1 and _is_white(row[right + 1]):
        right += 1
    assert abs((left + right) / 2 - W / 2) <= 3
    assert coloured.start > white.start, "the state label is below the frame number"
    assert is_colour(img[coloured.start + 1, W // 2])


@pytest.mark.parametrize("on", [True, False])
def test_labels_activation_box_and_speaker_boxes(on: bool) -> None:
    box = (200, 120, 260, 180)
    face = SpeakerMark(box=(40, 80, 130, 220), label="S3", speaking=True)
    frame = _frame()
    out = draw_overlay(frame, 12, lipsync_on=on, activation=[box], speakers=[face])
    img = _bgr(out)
    is_colour = _is_green if on else _is_red
    _check_top_labels(img, is_colour)
    x0, y0, x1, y1 = box
    mid_x, mid_y = (x0 + x1) // 2, (y0 + y1) // 2
    for x, y in ((x0, mid_y), (x1 - 1, mid_y), (mid_x, y0), (mid_x, y1 - 1)):
        assert is_colour(img[y, x]), f"activation box edge at {(x, y)}: {img[y, x]}"
    base = _bgr(frame)
    assert np.array_equal(img[mid_y, mid_x], base[mid_y, mid_x]), "inside the box the frame is untouched"
    # The box's coordinates are written under it, in its colour.
    under = img[y1 + 2 : y1 + 16, x0 : x0 + 40].reshape(-1, 3)
    assert any(is_colour(px) for px in under)
    fx0, fy0, fx1, fy1 = face.box
    for x, y in ((fx0, 180), (fx1 - 1, 180), (85, fy1 - 1)):
        assert _is_white(img[y, x]), f"speaker box edge at {(x, y)}: {img[y, x]}"
    assert out.pts == frame.pts
    # Away from what is drawn the planes keep their values bit for bit.
    for before, after in zip(plane_arrays(frame), plane_arrays(out)):
        rows, cols = before.shape[0] * 15 // 16, before.shape[1] // 2
        assert np.array_equal(before[rows:, cols:], after[rows:, cols:])


def test_annotate_outlines_the_region_actually_pasted_in_green() -> None:
    alpha = np.zeros((40, 60), np.float32)
    alpha[10:30, 20:50] = 0.5  # written only here: (170, 110) to (200, 130)
    job = FrameJob(index=3, source_index=3, frame=_frame())
    job.meta["lipsync_regions"] = [CropRegion(140, 90, 100)]
    job.meta["lipsync_pastes"] = [Paste(x=150, y=100, alpha=alpha)]
    annotate(job)
    img = _bgr(job.frame)
    assert job.changed
    assert job.meta["overlay_activation"] == [(170, 110, 200, 130)]
    _check_top_labels(img, _is_green)
    assert _is_green(img[120, 170]) and _is_green(img[110, 185])
    assert not _is_green(img[95, 140]), "the crop square is not drawn when a paste says where the mouth went"


def test_bypassed_frame_is_off_with_client_boxes_and_the_would_be_region_in_red() -> None:
    speaker = SpeakerBox(x=60, y=70, width=60, height=80, speaker_id=4, is_speaking=True)
    job = FrameJob(index=9, source_index=9, frame=_frame(), bypass=True,
                   speakers=FrameSpeakers(9, (speaker,), bypass=True))
    BypassOverlay()(job)
    img = _bgr(job.frame)
    _check_top_labels(img, _is_red)
    assert _is_white(img[110, 60]) and _is_white(img[110, 119]), "the client's box is outlined in white"
    crop = SquareBox.around_face((60, 70, 120, 150)).pixel_region()
    assert job.meta["overlay_activation"] == [(crop.x, crop.y, crop.x + crop.side, crop.y + crop.side)]
    assert _is_red(img[crop.y + crop.side // 2 + 20, crop.x + crop.side - 1])


def test_bypassed_frame_without_boxes_repeats_the_previous_region_in_red() -> None:
    overlay = BypassOverlay()
    processed = FrameJob(index=0, source_index=0, frame=_frame())
    processed.meta["lipsync_regions"] = [CropRegion(100, 100, 60)]
    annotate(processed)
    overlay(processed)  # a processed frame: only remembered, not drawn again
    bypassed = FrameJob(index=1, source_index=1, frame=_frame(), bypass=True)
    overlay(bypassed)
    img = _bgr(bypassed.frame)
    _check_top_labels(img, _is_red)
    assert _is_red(img[130, 100]) and _is_red(img[100, 130])


def test_debug_job_draws_every_output_frame_bypassed_ones_included(tmp_path) -> None:
    from lipsync_service.core.neural import NeuralProcessor
    from lipsync_service.job import JobConfig
    from lipsync_service.pipeline import run_files
    from lipsync_service.settings import Settings
    from tests import synth
    from tests.core.fakes import EchoBackend

    video = synth.make_video(tmp_path / "in.mp4", seconds=0.4, size=(320, 240))
    speech = synth.make_wav(tmp_path / "speech.wav", seconds=0.4)
    bypass = {3, 4}
    speakers = [FrameSpeakers(i, (), bypass=i in bypass) for i in range(10)]
    out = tmp_path / "out.mp4"
    result = run_files(JobConfig(), Settings(debug_mode=True), NeuralProcessor(EchoBackend(), debug=True),
                       video, speech, out, speakers=speakers)
    assert (result.frames, result.frames_bypassed, result.frames_without_face) == (10, 2, 8)
    for frame in synth.decode_frames(out):
        img = frame.to_ndarray(format="bgr24").astype(int)
        _check_top_labels(img, _is_red)  # no face anywhere: LIPSYNC OFF, drawn by the processor or the pipeline
