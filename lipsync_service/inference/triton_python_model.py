"""Triton Python-backend model: runs the generator's model.onnx (beside this file) with ONNX Runtime.

Copied as model.py into a version folder by `lipsync-service models build-repo --target python_onnx`.
It runs inside Triton's Python stub, not in the service: only numpy, onnxruntime and Triton's utils.
It serves either generator contract, a lip_shape model of either width (2 or 5 columns): the input and output
names come from the model config, and the model file's tensor dims must be those the config declares.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """One ONNX Runtime session per model instance; requests batched by Triton run as one session call."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = config.get("parameters", {})
        threads = int(params.get("ort_intra_op_threads", {}).get("string_value", "0") or 0)
        # The tensors this model serves, as config.pbtxt names them (face + mel -> output, or mel -> lip_shape).
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # Idle ORT threads must not spin: this stub shares the cores with Triton's own request threads.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = Path(__file__).resolve().parent / "model.onnx"
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        # A file whose tensors differ from the config (a 5-column lip_shape model under a 2-column config) would
        # answer with tensors of another size than the client reserved for them: refuse to load instead.
        declared = {t["name"]: [int(d) for d in t["dims"]] for t in [*config["input"], *config["output"]]}
        for tensor in [*self.session.get_inputs(), *self.session.get_outputs()]:
            dims = list(tensor.shape[1:])
            want = declared.get(tensor.name)
            if want is not None and all(isinstance(d, int) for d in dims) and dims != want:
                raise ValueError(f"model.onnx tensor {tensor.name!r} has dims {dims}, config.pbtxt declares {want}")

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            parts = {
                name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests] for name in self.inputs
            }
            # One session call for everything the dynamic batcher grouped, split back per request. A single
            # request (the usual case) goes in as is: the config declares FP32, so no concatenate or cast copy.
            feeds = {name: arrays[0] if len(arrays) == 1 else np.concatenate(arrays) for name, arrays in parts.items()}
            outs = self.session.run(self.outputs, feeds)
        except Exception as exc:  # reported per request; Triton keeps serving
            error = pb_utils.TritonError(f"lipsync generator failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        start = 0
        for item in parts[self.inputs[0]]:
            end = start + item.shape[0]
            tensors = [pb_utils.Tensor(name, out[start:end]) for name, out in zip(self.outputs, outs)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = end
        return responses

    def finalize(self) -> None:
        self.session = None
