"""A real tritonserver (the nvidia-pytriton wheel's binary) serving the committed triton_repo on free ports, and one
serving a temporary repository of tiny lip_shape models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lipsync_service.errors import InferenceUnavailable

REPO_ROOT = Path(__file__).resolve().parents[2]
TRITON_REPO = REPO_ROOT / "triton_repo"
# Models of the lip_shape repository: the contract stated in config.pbtxt, not stated (tensor names decide), five
# columns (the viseme probabilities too), and tensor names that fit no contract. LIP_SHAPE_MAX_BATCH is their
# config's max_batch_size.
LIP_SHAPE_MODEL = "lip_shape"
LIP_SHAPE_UNSTATED = "lip_shape_unstated"
LIP_SHAPE_VISEMES = "lip_shape_visemes"
ODD_NAMES_MODEL = "odd_names"
LIP_SHAPE_MAX_BATCH = 4


def _start_or_skip(repository: Path = TRITON_REPO):  # -> LocalTriton
    pytest.importorskip("pytriton", reason="nvidia-pytriton (the triton extra) is not installed")
    from lipsync_service.inference.local_triton import LocalTriton

    try:
        server = LocalTriton(repository)
    except InferenceUnavailable as exc:
        pytest.skip(f"tritonserver cannot run here: {exc}")
    try:
        server.start(timeout_s=90)
    except InferenceUnavailable as exc:
        server.cleanup()
        pytest.skip(f"tritonserver did not start on this machine: {exc}")
    return server


@pytest.fixture(scope="module")
def triton_server() -> Iterator:
    """A running LocalTriton shared by a module's tests; stopped afterwards, also on failure."""
    server = _start_or_skip()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def own_triton_server() -> Iterator:
    """A LocalTriton for one test that stops and restarts it."""
    server = _start_or_skip()
    try:
        yield server
    finally:
        server.cleanup()


def write_lip_shape_repository(repo: Path) -> Path:
    """A python_onnx repository with the four lip_shape test models (see LIP_SHAPE_MODEL and below)."""
    from google.protobuf import text_format

    from lipsync_service.inference.base import CONTRACT_PARAMETER, LIP_SHAPE_VISEME_SIZE
    from lipsync_service.inference.repository import (
        CONFIG_FILE,
        ONNX_FILE,
        PYTHON_FILE,
        PYTHON_MODEL_SOURCE,
        Target,
        read_model_config,
        write_model,
    )

    from .tiny_models import write_lip_shape_onnx

    onnx_path = write_lip_shape_onnx(repo.parent / f"{repo.name}-src" / "lip_shape.onnx")
    for name in (LIP_SHAPE_MODEL, LIP_SHAPE_UNSTATED):
        write_model(Target.PYTHON_ONNX, onnx_path, repo, name, max_batch=LIP_SHAPE_MAX_BATCH, gpu=False, ort_threads=1)
    visemes = write_lip_shape_onnx(repo.parent / f"{repo.name}-src" / "visemes.onnx", columns=LIP_SHAPE_VISEME_SIZE)
    write_model(Target.PYTHON_ONNX, visemes, repo, LIP_SHAPE_VISEMES, max_batch=LIP_SHAPE_MAX_BATCH, gpu=False,
                ort_threads=1)
    unstated = read_model_config(repo / LIP_SHAPE_UNSTATED)
    del unstated.parameters[CONTRACT_PARAMETER]
    (repo / LIP_SHAPE_UNSTATED / CONFIG_FILE).write_text(text_format.MessageToString(unstated))
    # Fits no contract: write_model refuses such a file, so the folder is written by hand.
    odd = read_model_config(repo / LIP_SHAPE_MODEL)
    odd.name = ODD_NAMES_MODEL
    odd.output[0].name = "mouth"
    del odd.parameters[CONTRACT_PARAMETER]
    version = repo / ODD_NAMES_MODEL / "1"
    write_lip_shape_onnx(version / ONNX_FILE, output_name="mouth", contract_meta=False)
    (version / PYTHON_FILE).write_text(PYTHON_MODEL_SOURCE.read_text())
    (repo / ODD_NAMES_MODEL / CONFIG_FILE).write_text(text_format.MessageToString(odd))
    return repo


@pytest.fixture(scope="module")
def lip_shape_server(tmp_path_factory) -> Iterator:
    """A running LocalTriton serving write_lip_shape_repository (its folder: server.model_repository)."""
    from .tiny_models import need_onnx

    need_onnx()
    server = _start_or_skip(write_lip_shape_repository(tmp_path_factory.mktemp("lip_shape_repo") / "models"))
    try:
        yield server
    finally:
        server.cleanup()
