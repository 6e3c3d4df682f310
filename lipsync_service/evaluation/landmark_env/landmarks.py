"""Mouth opening and lower-face box per frame, measured with MediaPipe Face Mesh (the independent yardstick).

Runs inside the eval venv (`lipsync-service eval-env` creates it), not the service's: `python landmarks.py VIDEO OUT.json`.
Per frame: the inner-lip gap (landmarks 13, 14) divided by the face height (10 to 152), and the box of
the lower face (the face oval below the nose bridge, landmark 6, down to the chin) in pixels; null where no
face is found.
"""

import json
import sys

import av
import mediapipe as mp
import numpy as np

UPPER_LIP, LOWER_LIP, FOREHEAD, CHIN, NOSE_BRIDGE = 13, 14, 10, 152, 6


def main(video: str, out: str) -> None:
    openings, boxes = [], []
    oval = sorted({i for pair in mp.solutions.face_mesh.FACEMESH_FACE_OVAL for i in pair})
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=False,
                                         min_detection_confidence=0.5, min_tracking_confidence=0.5) as mesh, \
            av.open(video) as container:
        for frame in container.decode(container.streams.video[0]):
            rgb = frame.to_ndarray(format="rgb24")
            h, w = rgb.shape[:2]
            result = mesh.process(rgb)
            if not result.multi_face_landmarks:
                openings.append(None)
                boxes.append(None)
                continue
            pts = np.array([(p.x * w, p.y * h) for p in result.multi_face_landmarks[0].landmark])
            face_h = float(np.linalg.norm(pts[FOREHEAD] - pts[CHIN]))
            openings.append(float(np.linalg.norm(pts[UPPER_LIP] - pts[LOWER_LIP]) / max(face_h, 1e-6)))
            top = float(pts[NOSE_BRIDGE, 1])
            below = pts[oval][pts[oval][:, 1] >= top]
            xs = np.concatenate([below[:, 0], pts[[UPPER_LIP, LOWER_LIP, CHIN], 0]])
            boxes.append([float(xs.min()), top, float(xs.max()), float(pts[CHIN, 1])])
    with open(out, "w") as f:
        json.dump({"opening": openings, "lower_face": boxes}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
