"""Head pose from the face mesh: a real mesh turned by known angles reads those angles, and the edit fades beyond
the range where the re-shaped mouth looks right."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lipsync_service.core.faces import FaceDetector
from lipsync_service.core.landmarks import FaceLandmarker
from lipsync_service.core.pose import FADE_DEG, MAX_PITCH_DEG, MAX_YAW_DEG, HeadPose
from tests import footage
from tests.conftest import media_path


@pytest.fixture(scope="module")
def mesh() -> np.ndarray:
    frame = footage.load(media_path("talking_3.mp4"), seconds=0.2).frames[0]
    face = FaceDetector().detect_image(frame)[0]
    found = FaceLandmarker().detect(frame, face.box)
    assert found is not None
    return found.points.astype(np.float64)


def _turned(points: np.ndarray, yaw: float = 0.0, pitch: float = 0.0) -> np.ndarray:
    centre = points.mean(axis=0)
    y, p = math.radians(yaw), math.radians(pitch)
    turn = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    nod = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    return (points - centre) @ (nod @ turn).T + centre


def test_a_mesh_turned_by_known_angles_reads_those_angles(mesh) -> None:
    base = HeadPose.of(mesh)
    assert abs(base.yaw) < 15 and abs(base.pitch) < 20  # talking_3 faces the camera
    for yaw in (-40.0, -20.0, 20.0, 40.0):
        assert abs(abs(HeadPose.of(_turned(mesh, yaw=yaw)).yaw - base.yaw) - abs(yaw)) < 3
    for pitch in (-25.0, 25.0):
        assert abs(abs(HeadPose.of(_turned(mesh, pitch=pitch)).pitch - base.pitch) - abs(pitch)) < 3


def test_the_edit_is_full_inside_the_range_and_fades_beyond_it() -> None:
    assert HeadPose(yaw=MAX_YAW_DEG - 1, pitch=0, roll=0).edit_weight() == 1.0
    assert HeadPose(yaw=0, pitch=-MAX_PITCH_DEG + 1, roll=0).edit_weight() == 1.0
    assert HeadPose(yaw=-(MAX_YAW_DEG + FADE_DEG / 2), pitch=0, roll=0).edit_weight() == pytest.approx(0.5)
    assert HeadPose(yaw=0, pitch=MAX_PITCH_DEG + FADE_DEG, roll=0).edit_weight() == 0.0
    assert HeadPose(yaw=90, pitch=0, roll=40).edit_weight() == 0.0
