"""Mouth opening, lower-face box and the landmarks the fidelity measures need, per frame, measured with
MediaPipe Face Mesh (the independent yardstick).

Runs inside the eval venv (`lipsync-service eval-env` creates it), not the service's:
`python landmarks.py VIDEO OUT.json`.
Per frame (null where no face is found):
  opening     the inner-lip gap (landmarks 13, 14) divided by the face height (10 to 152);
  lower_face  the box of the lower face (the face oval below the nose bridge, landmark 6, down to the chin)
              [x0, y0, x1, y1] in pixels;
  points      {"lips": outer lip contour (20 [x, y], in contour order from the left corner 61 along the lower
              lip), "nose": nose tip (1), "chin": chin (152), "bridge": nose bridge (6), "eyes": the outer eye
              corners (33, 263), "oval": face oval (36 [x, y], in contour order from the forehead, 10)}, pixels
              rounded to 0.1.
"""

import json
import sys

import av
import mediapipe as mp
import numpy as np

UPPER_LIP, LOWER_LIP, FOREHEAD, CHIN, NOSE_BRIDGE, NOSE_TIP = 13, 14, 10, 152, 6, 1
# Outer corners of the eyes: a span the mouth and jaw do not move, to measure lengths in.
EYE_CORNERS = [33, 263]
# The outer lip contour: left corner, lower lip to the right corner, upper lip back.
OUTER_LIPS = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185]


def _ring(edges) -> list[int]:
    """The landmark indices of a closed contour (given as edges) in walking order, from FOREHEAD."""
    nxt: dict[int, list[int]] = {}
    for a, b in edges:
        nxt.setdefault(a, []).append(b)
        nxt.setdefault(b, []).append(a)
    ring, prev, cur = [FOREHEAD], None, FOREHEAD
    while True:
        step = next(v for v in nxt[cur] if v != prev)
        if step == FOREHEAD:
            return ring
        ring.append(step)
        prev, cur = cur, step


def _xy(p) -> list[float]:
    return [round(float(p[0]), 1), round(float(p[1]), 1)]


def main(video: str, out: str) -> None:
    openings, boxes, points = [], [], []
    oval = _ring(mp.solutions.face_mesh.FACEMESH_FACE_OVAL)
    lips_all = {i for pair in mp.solutions.face_mesh.FACEMESH_LIPS for i in pair}
    assert set(OUTER_LIPS) <= lips_all and len(oval) == 36, "unexpected Face Mesh topology"
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
                points.append(None)
                continue
            pts = np.array([(p.x * w, p.y * h) for p in result.multi_face_landmarks[0].landmark])
            face_h = float(np.linalg.norm(pts[FOREHEAD] - pts[CHIN]))
            openings.append(float(np.linalg.norm(pts[UPPER_LIP] - pts[LOWER_LIP]) / max(face_h, 1e-6)))
            top = float(pts[NOSE_BRIDGE, 1])
            below = pts[oval][pts[oval][:, 1] >= top]
            xs = np.concatenate([below[:, 0], pts[[UPPER_LIP, LOWER_LIP, CHIN], 0]])
            boxes.append([round(v, 1) for v in (float(xs.min()), top, float(xs.max()), float(pts[CHIN, 1]))])
            points.append({"lips": [_xy(pts[i]) for i in OUTER_LIPS], "nose": _xy(pts[NOSE_TIP]),
                           "chin": _xy(pts[CHIN]), "bridge": _xy(pts[NOSE_BRIDGE]),
                           "eyes": [_xy(pts[i]) for i in EYE_CORNERS], "oval": [_xy(pts[i]) for i in oval]})
    with open(out, "w") as f:
        json.dump({"opening": openings, "lower_face": boxes, "points": points}, f, separators=(",", ":"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
