"""Write the model card's stills: input (left) and output faces of eval runs, at a few frames.

`python tools/model_card_still.py EVAL_OUT models/model_card_still.jpg --frames 150 600` (whole faces), and
`python tools/model_card_still.py EVAL_OUT [EVAL_OUT_2 ...] models/model_card_mouth.png --mouth --frames 150 600`
(the mouth, zoomed 3x with nearest-neighbour pixels so the texture is seen as it is; one column per run).
EVAL_OUT: the folder `lipsync-service eval` wrote; baseline.mp4 is the unchanged input, output.mp4 the model's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import av
import cv2
import numpy as np

from lipsync_service.core.faces import FaceDetector

TILE = 256


def frames_at(path: Path, wanted: list[int]) -> dict[int, np.ndarray]:
    """RGB frames of a video at the given indices."""
    out: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                out[i] = frame.to_ndarray(format="rgb24")
            if len(out) == len(wanted):
                break
    return out


def face_square(rgb: np.ndarray, detector: FaceDetector) -> tuple[int, int, int]:
    """(x, y, side) of a square 1.6x the largest face, kept inside the frame."""
    faces = detector.detect_rgb(rgb)
    if not faces:
        raise SystemExit("no face found in a still frame")
    x1, y1, x2, y2 = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])).box
    side = int(min(max(x2 - x1, y2 - y1) * 1.6, rgb.shape[0], rgb.shape[1]))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    x = int(np.clip(cx - side / 2, 0, rgb.shape[1] - side))
    y = int(np.clip(cy - side / 2, 0, rgb.shape[0] - side))
    return x, y, side


def mouth_square(rgb: np.ndarray, detector: FaceDetector) -> tuple[int, int, int]:
    """(x, y, side) of a square around the mouth (0.6 of the face width), from our face mesh on the input."""
    from lipsync_service.core.landmarks import FaceLandmarker

    faces = detector.detect_rgb(rgb)
    if not faces:
        raise SystemExit("no face found in a still frame")
    face = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
    eyes = None if face.landmarks is None else face.landmarks[:2]
    mesh = FaceLandmarker().detect(np.ascontiguousarray(rgb[:, :, ::-1]), face.box, eyes)
    if mesh is None:
        raise SystemExit("the mouth of a still frame could not be read")
    p = mesh.points[:, :2]
    cx, cy = (p[61] + p[291]) / 2
    side = int(min(0.6 * float(np.linalg.norm(p[234] - p[454])), rgb.shape[0], rgb.shape[1]))
    x = int(np.clip(cx - side / 2, 0, rgb.shape[1] - side))
    y = int(np.clip(cy - side / 2, 0, rgb.shape[0] - side))
    return x, y, side


def main(argv: list[str] | None = None) -> None:
    """Command line entry (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("paths", type=Path, nargs="+", help="EVAL_OUT folders, then the image to write")
    ap.add_argument("--frames", type=int, nargs="+", default=[150, 600])
    ap.add_argument("--mouth", action="store_true", help="zoom on the mouth (3x, nearest) instead of the face")
    args = ap.parse_args(argv)
    *runs, out = args.paths
    if not runs:
        ap.error("give at least one EVAL_OUT folder and the output image")
    before = frames_at(runs[0] / "baseline.mp4", args.frames)
    afters = [frames_at(run / "output.mp4", args.frames) for run in runs]
    detector = FaceDetector()
    rows = []
    for i in args.frames:
        # The same square in every tile: only the mouth may differ.
        if args.mouth:
            x, y, side = mouth_square(before[i], detector)
            size, interp = 3 * side, cv2.INTER_NEAREST
        else:
            x, y, side = face_square(before[i], detector)
            size, interp = TILE, cv2.INTER_AREA
        tiles = [cv2.resize(img[y:y + side, x:x + side], (size, size), interpolation=interp)
                 for img in (before[i], *(after[i] for after in afters))]
        rows.append(np.concatenate(tiles, axis=1))
    if args.mouth:  # rows of different mouth sizes: bring them to the first row's width
        width = rows[0].shape[1]
        rows = [cv2.resize(r, (width, round(r.shape[0] * width / r.shape[1])), interpolation=cv2.INTER_NEAREST)
                for r in rows]
    args.out = out
    cv2.imwrite(str(args.out), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 92])
    print(args.out)


if __name__ == "__main__":
    main()
