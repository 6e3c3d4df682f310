"""Face crops of a whole clip for training, cut exactly as the service cuts them when serving.

Uses the core's detector (MTCNN on ONNX Runtime), tracker (head_movement_speed 0, the default) and crop
convention, so the generator trains on the framing it will see. The largest tracked face is taken, as the
service does without speaker data.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def crop_clip(video: Path, face_size: int, max_frames: int | None = None,
              head_movement_speed: int = 0) -> tuple[np.ndarray, np.ndarray, Fraction]:
    """Detect, track and crop the main face of every frame of a video.

    Args:
        video: the video file.
        face_size: S of the crops.
        max_frames: stop after this many frames.
        head_movement_speed: tracking mode, as the service's config field.

    Returns:
        (uint8 [N, S, S, 3] BGR crops, bool [N] face found, frame rate).
    """
    import av

    from lipsync_service.core.crops import extract_bgr, resize_square
    from lipsync_service.core.faces import FaceDetector
    from lipsync_service.core.tracking import FaceTracker, Observation, TrackingParams

    detector = FaceDetector()
    faces: list[np.ndarray] = []
    valid: list[bool] = []
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        fps = Fraction(stream.average_rate or stream.guessed_rate or 25)
        params = TrackingParams.for_speed(head_movement_speed, float(fps))
        tracker = FaceTracker(params)
        held: list[tuple[int, av.VideoFrame]] = []

        def emit(index: int, frame: av.VideoFrame) -> None:
            found = tracker.faces_at(index)
            if not found:
                faces.append(np.zeros((face_size, face_size, 3), np.uint8))
                valid.append(False)
                return
            best = max(found, key=lambda f: f.crop.side)
            crop = extract_bgr(frame, best.crop.pixel_region())
            faces.append(resize_square(crop, face_size))
            valid.append(True)

        for index, frame in enumerate(container.decode(stream)):
            if max_frames is not None and index >= max_frames:
                break
            frame = frame.reformat(format="yuv420p") if frame.format.name != "yuv420p" else frame
            if index % params.detect_every == 0:
                tracker.observe(index, [Observation(f.box) for f in detector.detect_frame(frame)])
            held.append((index, frame))
            while held and held[0][0] <= index - params.radius:
                emit(*held.pop(0))
        for index, frame in held:
            emit(index, frame)
    return np.stack(faces) if faces else np.zeros((0, face_size, face_size, 3), np.uint8), np.array(valid), fps
