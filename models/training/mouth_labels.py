"""Mouth-opening labels for prepared training crops, measured with MediaPipe Face Mesh (eval venv only).

Run inside the eval venv (`lipsync-service eval-env` creates it): `python mouth_labels.py CACHE_DIR OUT.npz`. Same
landmark definition as the eval (inner-lip gap 13-14 over face height 10-152), applied to the 96x96 BGR crops of every
clip in the cache; NaN where no face is found. The eval stays independent of the model: it measures the output video,
and these labels only supervise training.
"""

import json
import sys
from pathlib import Path

import mediapipe as mp
import numpy as np

UPPER_LIP, LOWER_LIP, FOREHEAD, CHIN = 13, 14, 10, 152


def main(cache: str, out: str) -> None:
    index = json.loads((Path(cache) / "index.json").read_text())
    labels = {}
    for clip in index["clips"]:
        faces = np.load(Path(cache) / clip["file"])["faces"]
        opening = np.full(len(faces), np.nan, np.float32)
        with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=False,
                                             min_detection_confidence=0.3, min_tracking_confidence=0.3) as mesh:
            for i, bgr in enumerate(faces):
                # Upscaled: Face Mesh is tuned for faces well above 96 px.
                rgb = np.ascontiguousarray(np.repeat(np.repeat(bgr[:, :, ::-1], 2, 0), 2, 1))
                result = mesh.process(rgb)
                if result.multi_face_landmarks:
                    pts = np.array([(p.x, p.y) for p in result.multi_face_landmarks[0].landmark])
                    face_h = float(np.linalg.norm(pts[FOREHEAD] - pts[CHIN]))
                    opening[i] = np.linalg.norm(pts[UPPER_LIP] - pts[LOWER_LIP]) / max(face_h, 1e-6)
        labels[clip["name"]] = opening
        print(clip["name"], len(faces), int(np.isfinite(opening).sum()), flush=True)
    np.savez(out, **labels)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
