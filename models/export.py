"""ONNX export of a generator with a dynamic batch axis and the service's tensor names."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from lipsync_service.inference.base import INPUT_FACE, INPUT_MEL, MEL_BINS, MEL_STEPS, OUTPUT_FACE
from lipsync_service.inference.repository import META_CHANNEL_ORDER, META_DESCRIPTION, META_FACE_SIZE


def export_onnx(
    module: nn.Module,
    path: str | Path,
    face_size: int,
    opset: int = 17,
    description: str = "",
    fp16_weights: bool = False,
) -> Path:
    """Export a generator to ONNX: inputs `face` [B,6,S,S] and `mel` [B,1,80,16], output `output` [B,3,S,S].

    Args:
        module: a generator taking (face, mel); put in eval mode here (BatchNorm uses running stats).
        path: the .onnx file to write (folders are created).
        face_size: S.
        opset: ONNX opset (17 runs on ONNX Runtime >= 1.13 and TensorRT >= 8.6).
        description: stored as metadata; the service reports it as model_info.
        fp16_weights: store large weights as float16 (half the file; computation stays float32).

    Returns:
        The path written.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    face = torch.rand(2, 6, face_size, face_size)
    mel = torch.randn(2, 1, MEL_BINS, MEL_STEPS)
    batch_axis = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns about its own deprecation and about GRU batch sizes; neither applies.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (face, mel),
            str(path),
            input_names=[INPUT_FACE, INPUT_MEL],
            output_names=[OUTPUT_FACE],
            dynamic_axes={INPUT_FACE: batch_axis, INPUT_MEL: batch_axis, OUTPUT_FACE: batch_axis},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(path))
    meta = {
        META_FACE_SIZE: str(face_size),
        META_CHANNEL_ORDER: "bgr",
        META_DESCRIPTION: description or type(module).__name__,
    }
    if fp16_weights:
        store_weights_fp16(model)
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def store_weights_fp16(model, min_elements: int = 1024) -> int:
    """Store every float32 initializer of at least min_elements as float16, cast back to float32 in the graph.

    The casts read only constants, so ONNX Runtime and TensorRT fold them when the model loads: inference
    runs in float32 on weights rounded to float16 (relative error about 5e-4), from a file about half the size.

    Returns:
        how many initializers were converted.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    casts, converted = [], 0
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT:
            continue
        array = numpy_helper.to_array(init)
        if array.size < min_elements:
            continue
        name = init.name
        half = numpy_helper.from_array(array.astype(np.float16), name + "_fp16")
        graph.initializer.remove(init)
        graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [name], to=TensorProto.FLOAT, name=name + "_to_fp32"))
        converted += 1
    # The casts must come before the nodes that read their outputs (ONNX wants topological order).
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return converted
