"""Covered mouths through the processor, with a stand-in for the occlusion model that says where the cover is: the
covered pixels keep their values, a mouth covered enough is not edited at all, and the edit fades out before and
back in after those frames rather than switching."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from lipsync_service.core.blend import write_support
from lipsync_service.core.crops import plane_arrays
from lipsync_service.core.neural import FADE_FRAMES, NeuralProcessor
from lipsync_service.core.processor import drain
from lipsync_service.media.types import FrameJob, VideoInfo
from tests.core.fakes import ArraySpeech, ShapeBackend

FPS = Fraction(25)


class _Cover:
    """What the occlusion model reports for one face: a rectangle of frame pixels covering `share` of the lips."""

    def __init__(self, rect: tuple[int, int, int, int] | None, share: float) -> None:
        self.rect, self.lip_share = rect, share

    def in_box(self, x0: int, y0: int, w: int, h: int, grow_px: float) -> np.ndarray:
        out = np.zeros((h, w), np.float32)
        if self.rect is not None:
            x1, y1, x2, y2 = self.rect
            g = int(np.ceil(grow_px))
            out[max(0, y1 - g - y0) : max(0, y2 + g - y0), max(0, x1 - g - x0) : max(0, x2 + g - x0)] = 1.0
        return out


class _Occlusions:
    """A stand-in for the occlusion model (a unit-test fake): frames are measured in order, one face each; in
    `covered` frames the cover lies over the mouth's left half or all of it."""

    def __init__(self, covered: range, whole: bool) -> None:
        self.covered, self.whole, self.calls = covered, whole, 0
        self.rects: dict[int, tuple[int, int, int, int]] = {}

    def measure(self, image: np.ndarray, origin: tuple[int, int], raw: np.ndarray) -> _Cover:
        k, self.calls = self.calls, self.calls + 1
        if k not in self.covered:
            return _Cover(None, 0.0)
        left, right = raw[61, :2], raw[291, :2]
        top, bottom = raw[0, 1], raw[17, 1]
        x2 = right[0] if self.whole else (left[0] + right[0]) / 2
        rect = (int(left[0]) - 4, int(top) - 4, int(x2) + 1, int(bottom) + 4)
        self.rects[k] = rect
        return _Cover(rect, 0.9 if self.whole else 0.1)


@pytest.fixture(scope="module")
def frames() -> list[av.VideoFrame]:
    from tests.conftest import media_path

    with av.open(str(media_path("talking_1.mp4"))) as container:
        out = []
        for frame in container.decode(video=0):
            out.append(frame.reformat(format="yuv420p"))
            if len(out) == 40:
                break
    return out


def _speech() -> ArraySpeech:
    t = np.arange(int(2.0 * 16000)) / 16000
    return ArraySpeech((0.3 * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2 * np.sin(2 * np.pi * 180 * t))
                       .astype(np.float32))


def _run(frames: list[av.VideoFrame], occlusions: _Occlusions) -> tuple[list[FrameJob], list[list[np.ndarray]]]:
    originals = [[p.copy() for p in plane_arrays(f)] for f in frames]
    proc = NeuralProcessor(ShapeBackend(gain=3.0), occlusion_factory=lambda: occlusions, speaker_choice="active")
    proc.start(VideoInfo(frames[0].width, frames[0].height, FPS, "yuv420p", None), _speech())
    jobs = [FrameJob(index=i, source_index=i, frame=f) for i, f in enumerate(frames)]
    return drain(proc, jobs), originals


def test_a_covered_mouth_is_left_alone_and_the_edit_fades_around_it(frames) -> None:
    covered = range(16, 24)
    out, originals = _run(frames, _Occlusions(covered, whole=True))
    for job in out:
        if job.index in covered:
            assert not job.changed, f"frame {job.index}: a covered mouth was edited"
            assert tuple(job.meta["lipsync_skipped"][0][:2]) == ("S1", "mouth covered")
    # Peak blend weight per frame: full far from the cover, lower as it approaches, back up after it.
    peak = {job.index: max((float(p.alpha.max()) for p in job.meta.get("lipsync_pastes", [])), default=0.0)
            for job in out}
    for k in range(1, FADE_FRAMES + 1):
        assert peak[covered.start - k] == pytest.approx(k / (FADE_FRAMES + 1), abs=0.02)
        assert peak[covered.stop - 1 + k] == pytest.approx(k / (FADE_FRAMES + 1), abs=0.02)
    assert peak[5] == pytest.approx(1.0) and peak[35] == pytest.approx(1.0)


def test_a_partly_covered_mouth_is_re_shaped_around_the_cover(frames) -> None:
    covered = range(10, 30)
    occlusions = _Occlusions(covered, whole=False)
    out, originals = _run(frames, occlusions)
    edited = 0
    for job in out:
        if job.index not in covered or not job.changed:
            continue
        edited += 1
        luma, _ = write_support(job.frame.width, job.frame.height, job.meta["lipsync_pastes"])
        x1, y1, x2, y2 = occlusions.rects[job.index]
        for k, (after, before) in enumerate(zip(plane_arrays(job.frame), originals[job.index])):
            s = 1 if k == 0 else 2
            # The cover keeps its source samples exactly, luma and chroma.
            cover = (slice(y1 // s, y2 // s), slice(x1 // s, x2 // s))
            assert np.array_equal(after[cover], before[cover])
        # ... while the uncovered half of the mouth is re-shaped.
        assert luma[:, x2 + 2 :].any()
    assert edited >= len(covered) - 2, "a small cover must not stop the edit"


class _Flicker(_Occlusions):
    """A hand whose measured share drops in some frames (the landmark model misplaced the lips behind the fingers):
    `shares` per frame index, the cover over the whole mouth wherever the share is above zero."""

    def __init__(self, shares: dict[int, float]) -> None:
        super().__init__(range(0), whole=True)
        self.shares = shares

    def measure(self, image: np.ndarray, origin: tuple[int, int], raw: np.ndarray) -> _Cover:
        k, self.calls = self.calls, self.calls + 1
        share = self.shares.get(k, 0.0)
        if share <= 0.0:
            return _Cover(None, 0.0)
        left, right, top, bottom = raw[61, :2], raw[291, :2], raw[0, 1], raw[17, 1]
        return _Cover((int(left[0]) - 4, int(top) - 4, int(right[0]) + 1, int(bottom) + 4), share)


def test_a_cover_whose_share_drops_for_a_few_frames_stays_unedited_throughout(frames) -> None:
    # Covered at 12, then read as barely covered (13-14) and not at all (15-16): bridged; covered again (17-18), and
    # gone after 18.
    shares = {12: 0.6, 13: 0.05, 14: 0.03, 15: 0.0, 16: 0.0, 17: 0.5, 18: 0.4}
    out, _ = _run(frames, _Flicker(shares))
    changed = {job.index for job in out if job.changed}
    assert not changed & set(range(12, 19)), sorted(changed & set(range(12, 19)))
    # Outside it the edit fades as usual: on well before, on again well after.
    assert {5, 30} <= changed
