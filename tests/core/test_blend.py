"""Blending works on the yuv planes: pixels outside the mask stay bit-identical, inside they change."""

from __future__ import annotations

import av
import numpy as np
import pytest

from lipsync_service.core.blend import blend_mask, copy_frame, paste_face, paste_patch, write_support
from lipsync_service.core.crops import CropRegion, SquareBox, extract_bgr, plane_arrays


def _noise_frame(w: int, h: int, seed: int = 0) -> av.VideoFrame:
    rng = np.random.default_rng(seed)
    frame = av.VideoFrame(w, h, "yuv420p")
    for plane in plane_arrays(frame):
        plane[...] = rng.integers(16, 236, plane.shape, dtype=np.uint8)
    frame.pts = 7
    return frame


def test_mask_is_feathered_lower_face_and_zero_at_the_edges():
    m = blend_mask(200)
    assert m.max() == pytest.approx(1.0, abs=1e-3)
    assert m[:100].max() == 0.0, "nothing above the model's mask line is written"
    assert m[:, 0].max() == 0.0 and m[:, -1].max() == 0.0 and m[-1].max() == 0.0
    # Feathered: intermediate values exist between the core and the outside.
    assert ((m > 0.05) & (m < 0.95)).sum() > 0.1 * (m > 0).sum()


@pytest.mark.parametrize("region", [CropRegion(60, 40, 120), CropRegion(-30, 150, 100), CropRegion(260, -20, 90)])
def test_pixels_outside_the_mask_are_bit_identical(region):
    src = _noise_frame(320, 240)
    out = copy_frame(src)
    generated = np.full((96, 96, 3), (40, 200, 90), np.uint8)
    paste = paste_face(out, region, generated)
    assert paste is not None
    luma, chroma = write_support(320, 240, [paste])
    for k, (a, b) in enumerate(zip(plane_arrays(src), plane_arrays(out))):
        support = luma if k == 0 else chroma
        assert np.array_equal(a[~support], b[~support]), f"plane {k} changed outside the mask"
        assert (a[support] != b[support]).mean() > 0.5, f"plane {k} barely changed inside the mask"
    assert out.pts == 7
    # The source frame itself is untouched (decoded frames may be shared with the decoder).
    assert np.array_equal(plane_arrays(src)[0], plane_arrays(_noise_frame(320, 240))[0])


def test_colour_matching_removes_a_colour_cast():
    """A generated face with the right content but a colour cast comes out close to the original."""
    src = av.VideoFrame.from_ndarray(np.full((240, 320, 3), (90, 120, 180), np.uint8), format="bgr24").reformat(
        format="yuv420p")
    region = CropRegion(100, 60, 120)
    tinted = np.clip(extract_bgr(src, region).astype(int) + (30, -20, 25), 0, 255).astype(np.uint8)
    matched, raw = copy_frame(src), copy_frame(src)
    paste_face(matched, region, tinted, colour_match=True)
    paste_face(raw, region, tinted, colour_match=False)
    err = lambda f: np.abs(f.to_ndarray(format="bgr24").astype(int) - src.to_ndarray(format="bgr24")).max()  # noqa: E731
    assert err(raw) > 15
    assert err(matched) <= 3


def test_crop_square_and_even_region():
    sq = SquareBox.around_face((100, 50, 200, 180))
    assert sq.side == pytest.approx(1.3 * 130)
    r = sq.pixel_region()
    assert r.x % 2 == 0 and r.y % 2 == 0 and r.side % 2 == 0
    assert abs(r.x + r.side / 2 - sq.cx) <= 2 and abs(r.y + r.side / 2 - sq.cy) <= 2


def test_extract_pads_at_the_frame_border():
    frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), 200, np.uint8), format="bgr24").reformat(format="yuv420p")
    crop = extract_bgr(frame, CropRegion(-40, -40, 100))
    assert crop.shape == (100, 100, 3)
    assert np.abs(crop.astype(int) - 200).max() <= 5  # replicated edge, not black


def test_crop_image_matches_extract_for_bgr_data():
    from lipsync_service.core.crops import crop_image

    bgr = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    region = CropRegion(-20, 30, 80)
    crop = crop_image(bgr, region)
    assert crop.shape == (80, 80, 3)
    assert np.array_equal(crop[:, 20:], bgr[30:110, 0:60])
    assert np.array_equal(crop[:, 0], bgr[30:110, 0])  # replicated left edge


@pytest.mark.parametrize("x,y", [(41, 33), (-15, 200), (300, -7)])
def test_paste_patch_writes_only_where_its_weights_are_not_zero(x, y):
    """Any weights, any (even odd) position, partly outside the frame: nothing else changes."""
    src = _noise_frame(320, 240, seed=3)
    out = copy_frame(src)
    yy, xx = np.mgrid[0:60, 0:80]
    alpha = np.clip(1.0 - np.hypot((xx - 40) / 30, (yy - 30) / 20), 0, 1).astype(np.float32)
    patch = np.full((60, 80, 3), (200, 30, 60), np.uint8)
    paste = paste_patch(out, x, y, patch, alpha)
    assert paste is not None and paste.x % 2 == 0 and paste.y % 2 == 0
    luma, chroma = write_support(320, 240, [paste])
    inside = np.zeros((240, 320), bool)
    ys, xs = slice(max(y, 0), max(y + 60, 0)), slice(max(x, 0), max(x + 80, 0))
    inside[ys, xs] = alpha[ys.start - y : ys.stop - y, xs.start - x : xs.stop - x][: inside[ys, xs].shape[0],
                                                                                 : inside[ys, xs].shape[1]] > 0
    assert not (luma & ~inside).any(), "the support reaches beyond the non-zero weights"
    for k, (a, b) in enumerate(zip(plane_arrays(src), plane_arrays(out))):
        support = luma if k == 0 else chroma
        assert np.array_equal(a[~support], b[~support]), f"plane {k} changed outside the weights"
    assert (plane_arrays(src)[0][luma] != plane_arrays(out)[0][luma]).mean() > 0.3
