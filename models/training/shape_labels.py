"""Lip-shape labels (opening and width) for prepared training crops, measured with MediaPipe Face Mesh (eval venv only).

Run inside the eval venv (`lipsync-service eval-env` creates it): `python shape_labels.py CACHE_DIR OUT.npz`.
Per clip of the cache, per frame, the raw lip shape as two columns, NaN where no face is found:

- opening: inner-lip gap (landmarks 13-14) over face height (10-152), the eval's definition (as mouth_labels.py),
- width: mouth-corner distance (61-291) over face width (234-454).

Measured on the 96x96 BGR crops upscaled x2, as mouth_labels.py does. The npz holds one float32 [N, 2] array per
clip name; shape.py z-scores each column per clip. The eval stays independent of the model: it measures the output
video, and these labels only supervise training.
"""

import json
import sys
from pathlib import Path

import mediapipe as mp
import numpy as np

UPPER_LIP, LOWER_LIP, FOREHEAD, CHIN = 13, 14, 10, 152
LEFT_CORNER, RIGHT_CORNER, LEFT_CHEEK, RIGHT_CHEEK = 61, 291, 234, 454


def lip_shape(pts: np.ndarray) -> tuple[float, float]:
    """(opening, width) of one face's landmarks [468, 2] (normalised x, y of a square image)."""
    face_h = float(np.linalg.norm(pts[FOREHEAD] - pts[CHIN]))
    face_w = float(np.linalg.norm(pts[LEFT_CHEEK] - pts[RIGHT_CHEEK]))
    opening = float(np.linalg.norm(pts[UPPER_LIP] - pts[LOWER_LIP])) / max(face_h, 1e-6)
    width = float(np.linalg.norm(pts[LEFT_CORNER] - pts[RIGHT_CORNER])) / max(face_w, 1e-6)
    return opening, width


def main(cache: str, out: str) -> None:
    index = json.loads((Path(cache) / "index.json").read_text())
    labels = {}
    for clip in index["clips"]:
        faces = np.load(Path(cache) / clip["file"])["faces"]
        shape = np.full((len(faces), 2), np.nan, np.float32)
        with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=False,
                                             min_detection_confidence=0.3, min_tracking_confidence=0.3) as mesh:
            for i, bgr in enumerate(faces):
                # Upscaled: Face Mesh is tuned for faces well above 96 px.
                rgb = np.ascontiguousarray(np.repeat(np.repeat(bgr[:, :, ::-1], 2, 0), 2, 1))
                result = mesh.process(rgb)
                if result.multi_face_landmarks:
                    pts = np.array([(p.x, p.y) for p in result.multi_face_landmarks[0].landmark])
                    shape[i] = lip_shape(pts)
        labels[clip["name"]] = shape
        print(clip["name"], len(faces), int(np.isfinite(shape[:, 0]).sum()), flush=True)
    np.savez(out, **labels)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
