"""Write the model card's still: input (left) and output (right) faces of an eval run, at a few frames.

`python tools/model_card_still.py EVAL_OUT models/model_card_still.jpg --frames 150 600`
(EVAL_OUT: the folder `lipsync-service eval` wrote; baseline.mp4 is the unchanged input, output.mp4 the model's).
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


def main(argv: list[str] | None = None) -> None:
    """Command line entry (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("eval_out", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--frames", type=int, nargs="+", default=[150, 600])
    args = ap.parse_args(argv)
    before = frames_at(args.eval_out / "baseline.mp4", args.frames)
    after = frames_at(args.eval_out / "output.mp4", args.frames)
    detector = FaceDetector()
    rows = []
    for i in args.frames:
        x, y, side = face_square(before[i], detector)  # the same square in both: only the mouth may differ
        tiles = [cv2.resize(img[y:y + side, x:x + side], (TILE, TILE), interpolation=cv2.INTER_AREA)
                 for img in (before[i], after[i])]
        rows.append(np.concatenate(tiles, axis=1))
    cv2.imwrite(str(args.out), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 90])
    print(args.out)


if __name__ == "__main__":
    main()
