"""The occlusion model on held-out identities: false alarms on clean mouths, detection per occluder kind, mask IoU,
and whether the grown mask holds every pixel of a flat skin-coloured patch.

Frames are sampled across each held-out clip (identities the model was never trained or tuned on) and read the way
the service reads them (MTCNN box, Face Mesh through core/lips.py's LipTracker, the mouth box). An occluder is drawn
into the frame itself with its exact mask (models/training/occlusion_synth.py), the frame goes through yuv420p like
a decoded one, and the face mesh is read again on the occluded frame (from the clean frame's box, as the service's
tracker would carry it): the mesh is often off when something covers the mouth, and the model must cope.

Figures, per kind:
  (a) clean frames: share flagged (lip share >= 0.15);
  (b) occluders covering >= 30 % of the true lips: share flagged (a mesh the landmark model cannot read on the
      occluded frame counts as flagged: the service leaves that face unchanged);
  (c) IoU of the mask (>= 0.5, mapped to frame pixels by in_box) vs the true occluder mask, pooled over the
      frames' mouth boxes (inside the canonical crop);
  (d) flat skin-coloured patches: share of frames where every patch pixel (any pixel the patch changed) lies in
      in_box(grow = 3 % of the mouth width + 2 px), over the canonical crop and over the region a mouth edit may
      touch.

Usage: python benchmarks/eval_occlusion.py [--frames 40] [--seed 0] [--grid occlusion_eval.png] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import lipsync_service  # noqa: F401 - first, as in the CLI: it limits OpenBLAS's threads before numpy loads

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _media  # noqa: E402
import av  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from lipsync_models.training import occlusion_synth as synth  # noqa: E402
from lipsync_models.training.occlusion_data import frame_count, read_mouth, spread_indices  # noqa: E402
from lipsync_service.core.faces import FaceDetector  # noqa: E402
from lipsync_service.core.landmarks import FaceLandmarker  # noqa: E402
from lipsync_service.core.lips import LipTracker  # noqa: E402
from lipsync_service.core.occlusion import (  # noqa: E402
    CANON_H,
    CANON_W,
    MODEL_PATH,
    THRESHOLD,
    OcclusionDetector,
    warp_crop,
)

RESULTS = Path(__file__).resolve().parent / "results"
# The held-out clips (models/training/occlusion_data.py HELD_OUT); face_static_720p_transactional is the same
# footage as the streamable one and is not counted twice.
CLIPS = ("train/ed_pose_source2_60s.mp4", "train/dfrf_french_50s.mp4", "talking_1.mp4", "talking_2.mp4",
         "talking_3.mp4", "face_static_720p_streamable.mp4", "talking_long_silent.mp4")
FLAG_SHARE = 0.15
MIN_COVER = 0.30
GROW_OF_WIDTH, GROW_PX = 0.03, 2.0


def lip_polygon(shape: tuple[int, int], raw: np.ndarray) -> np.ndarray:
    """bool [H, W]: frame pixels inside the mesh's outer-lip polygon."""
    return synth.Mouth.of(raw).lip_mask(shape)


def draw_occluder(rng: np.random.Generator, frame: np.ndarray, raw: np.ndarray, kind: str, cover: str,
                  other: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(occluded frame BGR uint8, label bool [H, W], changed bool [H, W]) with one occluder drawn around the mouth."""
    mouth = synth.Mouth.of(raw)
    h, w = frame.shape[:2]
    x0 = int(max(0, mouth.centre[0] - 1.8 * mouth.width))
    x1 = int(min(w, mouth.centre[0] + 1.8 * mouth.width))
    y0 = int(max(0, mouth.centre[1] - 1.3 * mouth.width))
    y1 = int(min(h, mouth.centre[1] + 2.0 * mouth.width))
    region = frame[y0:y1, x0:x1]
    layer = synth.render(kind, rng, region, raw - [x0, y0], cover, None, other)
    out, label, alpha = synth.composite(region, [layer])
    frame = frame.copy()
    frame[y0:y1, x0:x1] = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    full_label = np.zeros((h, w), bool)
    full_label[y0:y1, x0:x1] = label
    changed = np.zeros((h, w), bool)
    # Any pixel the occluder touched, its soft edge and shadow included.
    changed[y0:y1, x0:x1] = np.abs(out - region.astype(np.float32)).max(axis=2) >= 0.5
    return frame, full_label, changed


def crop_footprint(to_canon: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """bool [h, w]: box pixels that fall inside the canonical crop."""
    m = to_canon.copy()
    m[:, 2] += m[:, :2] @ np.array([x0, y0], np.float64)
    inside = cv2.warpAffine(np.ones((CANON_H, CANON_W), np.uint8), m, (w, h),
                            flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0)
    return inside > 0


def to_yuv(bgr: np.ndarray) -> av.VideoFrame:
    """A yuv420p frame of a BGR image (the occluded frame goes through the same conversion as a decoded one)."""
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(bgr), format="bgr24").reformat(format="yuv420p")


def overlay(crop: np.ndarray, mask: np.ndarray, truth: np.ndarray | None) -> np.ndarray:
    """A canonical crop with the predicted mask tinted red and the true mask's outline in green, 2x."""
    vis = crop.astype(np.float32)
    red = mask >= THRESHOLD
    vis[red] = 0.5 * vis[red] + 0.5 * np.array([0, 0, 255])
    vis = np.clip(vis, 0, 255).astype(np.uint8)
    if truth is not None:
        edge = cv2.morphologyEx(truth.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        vis[edge] = (0, 255, 0)
    return cv2.resize(vis, (CANON_W * 2, CANON_H * 2), interpolation=cv2.INTER_NEAREST)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=40, help="frames sampled per clip")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", type=Path, default=MODEL_PATH)
    ap.add_argument("--grid", type=Path, default=Path("occlusion_eval.png"), help="PNG of held-out crops and masks")
    args = ap.parse_args()

    detector, landmarker, model = FaceDetector(), FaceLandmarker(), OcclusionDetector(args.model)
    rng = np.random.default_rng(args.seed)
    stats: dict[str, dict] = {k: {"n": 0, "flagged": 0, "lost": 0, "inter": 0, "union": 0, "ious": [],
                                  "d_crop": 0, "d_edit": 0, "d_n": 0}
                              for k in ("clean", *synth.KINDS)}
    per_clip: dict[str, dict[str, list[bool]]] = {}
    tiles: list[np.ndarray] = []
    times: list[float] = []
    t_start = time.time()
    for name in CLIPS:
        path = _media.shared(name)
        clip_rows: dict[str, list[bool]] = {}
        per_clip[path.name] = clip_rows
        with av.open(str(path)) as container:
            fps = float(container.streams.video[0].average_rate or 25)
        wanted = spread_indices(frame_count(path), args.frames)
        prev_crop = None
        with av.open(str(path)) as container:
            for k, frame in enumerate(container.decode(video=0)):
                if k > wanted[-1]:
                    break
                if k not in wanted:
                    continue
                frame = frame.reformat(format="yuv420p")
                clean = read_mouth(frame, k, detector, LipTracker(landmarker, fps))
                if clean is None:
                    continue
                t = time.perf_counter()
                occ = model.measure(clean.image, clean.origin, clean.raw)
                times.append(time.perf_counter() - t)
                s = stats["clean"]
                s["n"] += 1
                s["flagged"] += occ.lip_share >= FLAG_SHARE
                clip_rows.setdefault("clean", []).append(occ.lip_share >= FLAG_SHARE)
                if len(tiles) < 120 and k == wanted[len(wanted) // 2]:
                    tiles.append(overlay(warp_crop(clean.image, clean.origin, occ.to_canon), occ.mask, None))
                for j, kind in enumerate(synth.KINDS):
                    cover = "full" if (k + j) % 2 == 0 else "part"
                    bgr, label, changed = draw_occluder(rng, clean.frame, clean.raw, kind, cover, prev_crop)
                    lips = lip_polygon(label.shape, clean.raw)
                    covered = float(label[lips].mean()) if lips.any() else 0.0
                    read = read_mouth(to_yuv(bgr), k, detector, LipTracker(landmarker, fps), box=clean.box)
                    s = stats[kind]
                    if read is None:
                        if covered >= MIN_COVER:
                            s["n"] += 1
                            s["flagged"] += 1
                            s["lost"] += 1
                            clip_rows.setdefault(kind, []).append(True)
                        continue
                    occ = model.measure(read.image, read.origin, read.raw)
                    x0, y0 = read.origin
                    bh, bw = read.image.shape[:2]
                    foot = crop_footprint(occ.to_canon, x0, y0, bw, bh)
                    pred = occ.in_box(x0, y0, bw, bh, 0.0) > 0
                    truth = label[y0 : y0 + bh, x0 : x0 + bw] & foot
                    inter, union = int((pred & truth).sum()), int((pred | truth).sum())
                    s["inter"] += inter
                    s["union"] += union
                    if union:
                        s["ious"].append(inter / union)
                    if covered >= MIN_COVER:
                        s["n"] += 1
                        s["flagged"] += occ.lip_share >= FLAG_SHARE
                        clip_rows.setdefault(kind, []).append(occ.lip_share >= FLAG_SHARE)
                    if kind == "flat_skin" and covered >= MIN_COVER:
                        width = float(np.linalg.norm(read.raw[61] - read.raw[291]))
                        grown = occ.in_box(x0, y0, bw, bh, GROW_OF_WIDTH * width + GROW_PX) > 0
                        touched = changed[y0 : y0 + bh, x0 : x0 + bw]
                        edit = LipTracker.mouth_alpha(read.lips, x0, y0, max(bw, bh))[:bh, :bw] > 0
                        s["d_n"] += 1
                        s["d_crop"] += not (touched & foot & ~grown).any()
                        s["d_edit"] += not (touched & edit & ~grown).any()
                    if len(tiles) < 120 and k in wanted[:: max(1, len(wanted) // 2)]:
                        canon_truth = cv2.warpAffine(label.astype(np.uint8), occ.to_canon, (CANON_W, CANON_H),
                                                     flags=cv2.INTER_NEAREST)
                        tiles.append(overlay(warp_crop(read.image, read.origin, occ.to_canon), occ.mask, canon_truth))
                prev_crop = cv2.resize(warp_crop(clean.image, clean.origin, occ.to_canon), (CANON_W, CANON_H))
        print(f"{path.name}: " + ", ".join(f"{kind} {sum(v)}/{len(v)} flagged" for kind, v in clip_rows.items()),
              flush=True)

    print(f"\nheld-out clips: {', '.join(Path(c).name for c in CLIPS)}; {args.frames} frames sampled per clip; "
          f"occluders cover 'full' and 'part' of the lips alternately; (b) counts frames with >= {MIN_COVER:.0%} of "
          f"the true lips covered ({time.time() - t_start:.0f} s)\n")
    print(f"| kind | frames | flagged (lip share >= {FLAG_SHARE}) | mesh lost | IoU pooled | IoU mean | "
          "(d) patch inside grown mask: crop / edit region |")
    print("|---|---|---|---|---|---|---|")
    table = {}
    for kind, s in stats.items():
        flagged = s["flagged"] / s["n"] if s["n"] else float("nan")
        iou = s["inter"] / s["union"] if s["union"] else float("nan")
        mean_iou = float(np.mean(s["ious"])) if s["ious"] else float("nan")
        d = (f"{s['d_crop']}/{s['d_n']} / {s['d_edit']}/{s['d_n']}" if s["d_n"] else "")
        iou_text = "" if kind == "clean" else f"{iou:.3f}"
        mean_text = "" if kind == "clean" else f"{mean_iou:.3f}"
        print(f"| {kind} | {s['n']} | {100 * flagged:.1f} % | {s['lost']} | {iou_text} | {mean_text} | {d} |")
        table[kind] = {"frames": s["n"], "flagged": flagged, "mesh_lost": s["lost"], "iou_pooled": iou,
                       "iou_mean": mean_iou, "d_frames": s["d_n"], "d_all_inside_crop": s["d_crop"],
                       "d_all_inside_edit": s["d_edit"]}
    ms = 1e3 * np.array(times)
    print(f"\nmeasure(): median {np.median(ms):.2f} ms, fastest {ms.min():.2f} ms per face over {len(ms)} clean "
          "frames (one ORT thread, this machine's load included)")
    if tiles:
        cols = 10
        while len(tiles) % cols:
            tiles.append(np.zeros_like(tiles[0]))
        grid = np.vstack([np.hstack(tiles[i : i + cols]) for i in range(0, len(tiles), cols)])
        cv2.imwrite(str(args.grid), grid)
        print(f"grid of held-out crops (red: predicted occluder, green: true outline): {args.grid}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "eval_occlusion.json").write_text(json.dumps({"table": table, "per_clip": {
        c: {k: [int(sum(v)), len(v)] for k, v in rows.items()} for c, rows in per_clip.items()},
        "measure_ms_median": float(np.median(ms))}, indent=1))


if __name__ == "__main__":
    main()
