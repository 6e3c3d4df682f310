"""Head pose from the face mesh, and how far the mouth edit may be trusted at that pose.

The face mesh gives every point a depth in the same pixel scale as x and y. The face's left-right axis is the mean
of the vectors between mirrored points (the face oval's two sides, the eye corners, the mouth corners), its up axis
the chin-to-forehead vector made orthogonal to it. Yaw is the left-right axis's turn out of the picture plane, pitch
the up axis's, roll the left-right axis's tilt within it. The re-shaped mouth is drawn in the picture plane: a face
turned far enough shows its mouth foreshortened and the warp's straight-on assumptions fail, so beyond the measured
range the edit fades to the source (docs/behaviour.md#head-pose).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lipsync_service.core.landmarks import CHIN, FACE_OVAL, LEFT_EYE_OUTER, RIGHT_EYE_OUTER

# Mirrored pairs (image-left point, image-right point): the oval runs from the forehead (10) round one side to the
# chin (152) at position 18 and back up the other side, so positions k and 36 - k mirror each other.
MIRRORED = tuple((FACE_OVAL[36 - k], FACE_OVAL[k]) for k in range(1, 18)) + (
    (LEFT_EYE_OUTER, RIGHT_EYE_OUTER), (133, 362), (61, 291))
FOREHEAD = 10
# The edit is full within these angles (degrees) and fades to nothing over FADE_DEG beyond them. Chosen from zoomed
# crops of turned heads (docs/behaviour.md#head-pose): up to these angles the re-shaped lips look as straight-on ones
# do; beyond them the far mouth corner is foreshortened and the warp bends the lip line.
MAX_YAW_DEG = 35.0
MAX_PITCH_DEG = 25.0
FADE_DEG = 10.0


@dataclass(frozen=True)
class HeadPose:
    """A head's orientation in degrees: yaw (turn left/right), pitch (nod up/down), roll (tilt in the picture)."""

    yaw: float
    pitch: float
    roll: float

    @classmethod
    def of(cls, mesh: np.ndarray) -> HeadPose:
        """The pose of a face mesh [468, 3] (x, y, depth in pixels)."""
        p = mesh[:, :3].astype(np.float64)
        left = p[[a for a, _ in MIRRORED]]
        right = p[[b for _, b in MIRRORED]]
        across = (right - left).mean(axis=0)
        across /= max(float(np.linalg.norm(across)), 1e-9)
        up = p[FOREHEAD] - p[CHIN]
        up -= across * float(up @ across)
        up /= max(float(np.linalg.norm(up)), 1e-9)
        return cls(yaw=math.degrees(math.atan2(across[2], math.hypot(across[0], across[1]))),
                   pitch=math.degrees(math.atan2(up[2], math.hypot(up[0], up[1]))),
                   roll=math.degrees(math.atan2(across[1], across[0])))

    def edit_weight(self) -> float:
        """1 where the re-shaped mouth is trusted, falling linearly to 0 over FADE_DEG beyond the measured range."""
        over = max(abs(self.yaw) - MAX_YAW_DEG, abs(self.pitch) - MAX_PITCH_DEG, 0.0)
        return max(0.0, 1.0 - over / FADE_DEG)
