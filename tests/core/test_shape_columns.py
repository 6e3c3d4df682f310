"""Lip-shape models of either width: the spec carries the model's column count, the neural processor checks the
output against it and hands each face's whole row (opening_z, width_z and, with 5 columns, closure, tuck, round)
to the renderer unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync_service import pipeline
from lipsync_service.core.lips import LipTracker
from lipsync_service.core.neural import NeuralProcessor
from lipsync_service.errors import InferenceError, InternalError
from lipsync_service.inference.base import (
    LIP_SHAPE_COLUMNS,
    LIP_SHAPE_SIZE,
    LIP_SHAPE_VISEME_SIZE,
    ModelSpec,
    OutputContract,
    sizes_of,
)
from lipsync_service.job import JobConfig
from lipsync_service.settings import Settings
from tests.core.fakes import ShapeBackend


def test_a_lip_shape_spec_has_2_or_5_columns_and_an_rgb_spec_none() -> None:
    shape = OutputContract.LIP_SHAPE
    assert ModelSpec("m", 0, 4, contract=shape).shape_columns == LIP_SHAPE_SIZE  # models of before: 2
    assert ModelSpec("m", 0, 4, contract=shape, shape_columns=5).output_dims == (5,)
    assert ModelSpec("m", 96, 4).output_dims == (3, 96, 96) and ModelSpec("m", 96, 4).shape_columns == 0
    with pytest.raises(InferenceError, match="2 or 5 output columns, not 3"):
        ModelSpec("m", 0, 4, contract=shape, shape_columns=3)
    assert LIP_SHAPE_COLUMNS[:LIP_SHAPE_SIZE] == ("opening_z", "width_z") and len(LIP_SHAPE_COLUMNS) == 5


def test_sizes_come_from_the_tensor_dims() -> None:
    mel = {"mel": [1, 80, 16]}
    for columns in (2, 5):
        sizes = sizes_of(OutputContract.LIP_SHAPE, {**mel, "lip_shape": [columns]})
        assert sizes is not None and (sizes.face_size, sizes.shape_columns) == (0, columns)
    for bad in ([3], [2, 1], [], ["C"]):
        assert sizes_of(OutputContract.LIP_SHAPE, {**mel, "lip_shape": bad}) is None
    rgb = sizes_of(OutputContract.RGB_FACE, {"face": [6, 96, 96], **mel, "output": [3, 96, 96]})
    assert rgb is not None and (rgb.face_size, rgb.shape_columns) == (96, 0)


def _run(tmp_path, media, backend, monkeypatch) -> list[np.ndarray]:
    """Lip-sync talking_2 with 1.6 s of speech (the video is cut to it) with `backend`; the rows LipTracker.reshape
    was given, in call order."""
    from lipsync_service.evaluation.speech import load_speech, write_wav

    speech = tmp_path / "speech.wav"
    write_wav(speech, load_speech(media("speech_en_1.wav"))[: int(1.6 * 16000)])
    seen: list[np.ndarray] = []
    reshape = LipTracker.reshape

    def recording(lips, shape_z, frame_size):
        seen.append(np.array(shape_z))
        return reshape(lips, shape_z, frame_size)

    monkeypatch.setattr(LipTracker, "reshape", staticmethod(recording))
    pipeline.run_files(JobConfig(), Settings(), NeuralProcessor(backend), media("talking_2.mp4"), speech,
                       tmp_path / "out.mp4")
    return seen


@pytest.mark.parametrize("columns", [LIP_SHAPE_SIZE, LIP_SHAPE_VISEME_SIZE])
def test_each_face_gets_the_models_whole_row(tmp_path, media, monkeypatch, columns: int) -> None:
    backend = ShapeBackend(columns=columns)
    seen = _run(tmp_path, media, backend, monkeypatch)
    assert len(seen) >= 30 and len(seen) == len(backend.returned)
    assert all(row.shape == (columns,) for row in seen)
    np.testing.assert_allclose(np.stack(seen), np.stack(backend.returned), atol=1e-6)  # unchanged, in order
    if columns == LIP_SHAPE_VISEME_SIZE:
        assert np.ptp(np.stack(seen)[:, 2]) > 0.01  # the closure column varies with the speech, it is not padding


class _NarrowBackend(ShapeBackend):
    """Declares 5 columns but answers with 2: a broken backend."""

    def infer(self, face, mel):
        return super().infer(face, mel)[:, :LIP_SHAPE_SIZE]


def test_an_answer_of_another_width_than_the_spec_is_an_internal_error(tmp_path, media, monkeypatch) -> None:
    with pytest.raises(InternalError, match=r"generator returned shape \(\d+, 2\), expected \(\d+, 5\)"):
        _run(tmp_path, media, _NarrowBackend(columns=LIP_SHAPE_VISEME_SIZE), monkeypatch)
