"""Training data and training of the mouth-occlusion model: held-out clips never enter, synthetic occluders come with
exact masks, and `lipsync-service train occlusion` writes a model the service loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lipsync_models.training import occlusion_data as data
from lipsync_models.training import occlusion_synth as synth
from lipsync_service.cli import main


def test_held_out_identities_never_reach_training(tmp_path: Path) -> None:
    for name in ("ed_pose_source2_60s.mp4", "dfrf_french_50s.mp4", "talking_1.mp4", "talking_2.mp4", "talking_3.mp4",
                 "face_static_720p_streamable.mp4", "face_static_720p_transactional.mp4", "talking_long_silent.mp4",
                 "mimic_trump_10s.mp4", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in data.find_clips([tmp_path])] == ["mimic_trump_10s.mp4"]
    assert len(data.find_clips([tmp_path], held_out=True)) == 8


def _synthetic_mouth(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stored crop (skin, darker lips) and a mesh whose lip and cheek points are where the crop has them."""
    import cv2

    w, h = data.store_size()
    rng = np.random.default_rng(seed)
    skin = rng.uniform(90, 200, 3)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = skin
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    mesh = np.zeros((468, 2), np.float32)
    # Corners where the canonical crop puts them, in stored pixels.
    (u0, v0), (u1, _) = ((24 + data.MARGIN) * data.STORE_SCALE, (32 + data.MARGIN) * data.STORE_SCALE), \
        ((72 + data.MARGIN) * data.STORE_SCALE, 0)
    cx, half = (u0 + u1) / 2, (u1 - u0) / 2
    t = np.linspace(np.pi, -np.pi, len(synth.OUTER_LIPS), endpoint=False)
    for k, i in enumerate(synth.OUTER_LIPS):
        mesh[i] = (cx + half * np.cos(t[k]), v0 + 0.35 * half * np.sin(t[k]))
    mesh[61], mesh[291] = (u0, v0), (u1, v0)
    mesh[205], mesh[425] = (u0 - 10, v0 - 40), (u1 + 10, v0 - 40)
    cv2.fillPoly(img, [np.round(mesh[list(synth.OUTER_LIPS)]).astype(np.int32)], (60, 60, 150))
    return img, mesh


@pytest.mark.parametrize("kind", synth.KINDS)
def test_every_occluder_kind_comes_with_its_exact_mask(kind: str) -> None:
    img, mesh = _synthetic_mouth(0)
    rng = np.random.default_rng(1)
    lips = synth.Mouth.of(mesh).lip_mask(img.shape[:2])
    covered = []
    for _ in range(6):
        layer = synth.render(kind, rng, img, mesh, "full", other=img)
        out, label, alpha = synth.composite(img, [layer])
        assert label.shape == img.shape[:2] and label.dtype == bool and label.any()
        # Pixels the occluder does not reach (no alpha, no shadow) are the face's own.
        untouched = (alpha == 0) & (layer.shadow == 0)
        assert np.abs(out[untouched] - img[untouched]).max() == 0
        if kind != "glass":
            # The label is where the occluder hides at least half of the face.
            assert (alpha[label] >= 0.4).all() and not (label & (alpha == 0)).any()
        covered.append(label[lips].mean())
    # Hair lets the lips show between its strands; every other kind hides most of them when over all of the mouth.
    least = 0.1 if kind == "hair" else 0.3
    assert np.mean(covered) > least, f"'full' {kind} occluders cover {np.mean(covered):.2f} of the lips on average"


def test_a_flat_skin_patch_is_the_cheek_colour() -> None:
    img, mesh = _synthetic_mouth(2)
    layer = synth.render("flat_skin", np.random.default_rng(0), img, mesh, "full")
    inside = layer.alpha >= 0.999
    cheek = synth.cheek_colour(img, mesh, synth.Mouth.of(mesh).width)
    assert np.abs(layer.colour[inside] - cheek).max() <= 8


@pytest.mark.slow
def test_train_occlusion_writes_a_model_the_service_loads(tmp_path: Path, capsys) -> None:
    pytest.importorskip("torch")
    import onnxruntime as ort

    from lipsync_service.core.occlusion import CANON_H, CANON_W, OcclusionDetector

    mouths = [_synthetic_mouth(s) for s in range(6)]
    cache = tmp_path / "mouths.npz"
    np.savez(cache, crops=np.stack([m[0] for m in mouths]), meshes=np.stack([m[1] for m in mouths]),
             clip=np.array([0, 0, 1, 1, 2, 2], np.int32), names=np.array(["a.mp4", "b.mp4", "c.mp4"]),
             patches=np.full((2, data.PATCH_SIDE, data.PATCH_SIDE, 3), 90, np.uint8))
    out = tmp_path / "run"
    assert main(["train", "occlusion", str(out), "--cache", str(cache), "--steps", "2", "--batch", "4",
                 "--val-clip", "c.mp4", "--val-per-kind", "1"]) == 0
    printed = capsys.readouterr().out
    assert "4 training mouths, 2 validation mouths (c.mp4)" in printed and "validation" in printed
    session = ort.InferenceSession(str(out / "occlusion.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("crop", "tensor(uint8)", [CANON_H, CANON_W, 3])
    assert (outp.name, outp.shape[1:]) == ("occluder", [1, CANON_H, CANON_W])
    img, mesh = mouths[0]
    occ = OcclusionDetector(out / "occlusion.onnx").measure(img, (0, 0), mesh)
    assert occ.mask.shape == (CANON_H, CANON_W) and 0.0 <= occ.lip_share <= 1.0
