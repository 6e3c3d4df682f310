"""Tiny generator models built with onnx.helper for the contract tests (no torch): lip_shape models of either
width (2 columns, or 5 with the viseme probabilities), and one whose tensor names fit no contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lipsync_service.inference.base import (
    INPUT_MEL,
    LIP_SHAPE_SIZE,
    LIP_SHAPE_VISEME_SIZE,
    MEL_BINS,
    MEL_STEPS,
    OUTPUT_LIP_SHAPE,
)

# Fixed weights: mel [B, 1, 80, 16] flattened, times W [1280, C]; the two z-scores are 3 * tanh of their columns (a
# range of +-3), the three viseme probabilities the sigmoid of theirs.
WEIGHTS = (np.random.default_rng(7).normal(size=(MEL_BINS * MEL_STEPS, LIP_SHAPE_VISEME_SIZE)) / 40.0).astype(
    np.float32)


def need_onnx():  # -> the onnx module
    """Import onnx, or skip the calling test: it builds its model with onnx.helper."""
    return pytest.importorskip("onnx", reason="the onnx package (dev extra) builds the tiny test models")


def write_lip_shape_onnx(path: Path, output_name: str = OUTPUT_LIP_SHAPE, contract_meta: bool = True,
                         columns: int = LIP_SHAPE_SIZE) -> Path:
    """Write mel [B, 1, 80, 16] -> <output_name> [B, columns] (see WEIGHTS and lip_shape_reference), batch axis
    dynamic.

    Args:
        path: the .onnx file to write (parents created).
        output_name: the output tensor's name (another name gives a model that fits no contract).
        contract_meta: store the `lipsync_contract` metadata entry, as lipsync_models.training.shape does.
        columns: 2 (opening_z, width_z), 5 (and closure, tuck, round), or another width (breaks the contract).
    """
    onnx = need_onnx()
    from onnx import TensorProto, helper, numpy_helper

    z_columns = min(columns, LIP_SHAPE_SIZE)
    nodes = [
        helper.make_node("Flatten", [INPUT_MEL], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weights"], ["projected"]),
        helper.make_node("Slice", ["projected", "z_from", "z_to", "axis"], ["z_part"]),
        helper.make_node("Tanh", ["z_part"], ["squashed"]),
        helper.make_node("Mul", ["squashed", "three"], ["z" if columns > LIP_SHAPE_SIZE else output_name]),
    ]
    if columns > LIP_SHAPE_SIZE:
        nodes += [
            helper.make_node("Slice", ["projected", "z_to", "p_to", "axis"], ["p_part"]),
            helper.make_node("Sigmoid", ["p_part"], ["p"]),
            helper.make_node("Concat", ["z", "p"], [output_name], axis=1),
        ]
    graph = helper.make_graph(
        nodes,
        "tiny_lip_shape",
        [helper.make_tensor_value_info(INPUT_MEL, TensorProto.FLOAT, ["B", 1, MEL_BINS, MEL_STEPS])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["B", columns])],
        initializer=[
            numpy_helper.from_array(_weights(columns), "weights"),
            numpy_helper.from_array(np.array(3.0, np.float32), "three"),
            numpy_helper.from_array(np.array([0], np.int64), "z_from"),
            numpy_helper.from_array(np.array([z_columns], np.int64), "z_to"),
            numpy_helper.from_array(np.array([columns], np.int64), "p_to"),
            numpy_helper.from_array(np.array([1], np.int64), "axis"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    meta = {"lipsync.description": "tiny lip shape (test)"}
    if contract_meta:
        meta["lipsync_contract"] = "lip_shape"
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _weights(columns: int) -> np.ndarray:
    """W [1280, columns]: WEIGHTS' first columns, repeated for a width beyond 5."""
    return np.resize(WEIGHTS.T, (columns, WEIGHTS.shape[0])).T.copy()


def lip_shape_reference(mel: np.ndarray, columns: int = LIP_SHAPE_SIZE) -> np.ndarray:
    """What the tiny model computes, in numpy (float64, for tolerance checks)."""
    projected = mel.reshape(len(mel), -1).astype(np.float64) @ _weights(columns).astype(np.float64)
    z = 3.0 * np.tanh(projected[:, :LIP_SHAPE_SIZE])
    return np.concatenate([z, 1.0 / (1.0 + np.exp(-projected[:, LIP_SHAPE_SIZE:]))], axis=1)


def ort_lip_shape(path: Path, mel: np.ndarray) -> np.ndarray:
    """ONNX Runtime's own result for the model at path, one plain session call."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([session.get_outputs()[0].name], {INPUT_MEL: mel})[0]


def mel_batch(n: int, seed: int = 0) -> np.ndarray:
    """n speech-like mel windows in the front end's range [-4, 4]."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(-1.0, 1.5, size=(n, 1, MEL_BINS, MEL_STEPS)), -4, 4).astype(np.float32)
