"""Embedded ONNX Runtime backend: the generator's model.onnx from the model repository, in this process.

The model's contract (RGB_FACE or LIP_SHAPE) is read from the session's input and output names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lipsync_service.errors import InferenceError, InferenceUnavailable, InvalidInput
from lipsync_service.inference.base import (
    GeneratorBackend,
    ModelSpec,
    OutputContract,
    TensorSizes,
    check_request,
    model_feeds,
    run_in_batches,
    sizes_label,
)
from lipsync_service.inference.repository import (
    ONNX_FILE,
    config_contract,
    config_sizes,
    model_version_dir,
    read_model_config,
    session_contract,
)


class OnnxRuntimeBackend(GeneratorBackend):
    """Runs an ONNX generator with ONNX Runtime on the CPU (or CUDA when that provider is installed)."""

    def __init__(
        self,
        onnx_path: Path,
        max_batch_size: int = 16,
        intra_op_threads: int = 0,
        name: str | None = None,
        providers: list[str] | None = None,
    ) -> None:
        """Open a session.

        Args:
            onnx_path: the model file.
            max_batch_size: larger batches are split into calls of at most this size.
            intra_op_threads: ONNX Runtime intra-op threads (0: its default, one per core).
            name: model name for the spec (default: the file's model folder name).
            providers: ONNX Runtime execution providers (default: CPU).

        Raises:
            InferenceUnavailable: the file cannot be loaded or its shapes break its contract.
            InferenceError: its tensor names fit no contract.
        """
        import onnxruntime as ort

        onnx_path = Path(onnx_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        # The pipeline calls from one worker thread per stream; no inter-op parallelism to exploit.
        options.inter_op_num_threads = 1
        # Idle ORT threads must not spin: the cores are shared with decoding, encoding and other streams.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(onnx_path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # ONNX Runtime raises private exception types
            raise InferenceUnavailable(f"cannot load ONNX model {onnx_path}: {exc}") from exc
        try:
            contract = session_contract(self._session, onnx_path)
        except InvalidInput as exc:
            raise InferenceUnavailable(str(exc)) from exc
        self._output = contract.contract.output
        shape = sizes_label(contract.contract, TensorSizes(contract.face_size, contract.shape_columns))
        model_name = name or (onnx_path.parent.parent.name if onnx_path.parent.name.isdigit() else onnx_path.stem)
        self._spec = ModelSpec(
            name=model_name,
            face_size=contract.face_size,
            max_batch_size=max_batch_size,
            channel_order=contract.channel_order,
            description=f"{model_name}: {contract.description} (onnxruntime, {shape})",
            contract=contract.contract,
            shape_columns=contract.shape_columns,
        )

    @classmethod
    def from_repository(
        cls, repository: Path, name: str, version: str = "", max_batch_size: int = 16, intra_op_threads: int = 0
    ) -> OnnxRuntimeBackend:
        """Open <repository>/<name>/<version>/model.onnx (latest version when empty).

        The batch limit is the smaller of max_batch_size and the model config's max_batch_size. A config.pbtxt
        beside the model must have the ONNX file's contract and, for a lip_shape model, its output width.

        Raises:
            InferenceUnavailable: the model, version or file is missing or unusable.
            InferenceError: tensor names that fit no contract, or a config whose contract or sizes differ from the
                file's.
        """
        try:
            version_dir = model_version_dir(Path(repository), name, version)
        except InvalidInput as exc:
            raise InferenceUnavailable(str(exc)) from exc
        path = version_dir / ONNX_FILE
        if not path.is_file():
            raise InferenceUnavailable(
                f"{path} not found: the embedded ONNX Runtime backend needs an ONNX model "
                "(a tensorrt_plan repository needs NV_AI4M_LS_BACKEND=triton or tensorrt)"
            )
        limit = max_batch_size
        try:
            config = read_model_config(version_dir.parent)
        except InvalidInput:
            config = None  # a bare model.onnx without config.pbtxt is fine for the embedded backend
        if config is not None and config.max_batch_size > 0:
            limit = min(limit, config.max_batch_size)
        backend = cls(path, max_batch_size=limit, intra_op_threads=intra_op_threads, name=name)
        if config is not None:
            try:
                stated = config_contract(config)
                if stated is not backend.spec.contract:
                    raise InferenceError(
                        f"{version_dir.parent / 'config.pbtxt'} describes a {stated.value} model but {path} is "
                        f"{backend.spec.contract.value}"
                    )
                columns = config_sizes(config).shape_columns if stated is OutputContract.LIP_SHAPE else 0
                if columns != backend.spec.shape_columns:
                    raise InferenceError(
                        f"{version_dir.parent / 'config.pbtxt'} declares {columns} lip_shape columns "
                        f"but {path} returns {backend.spec.shape_columns}"
                    )
            except InferenceError:
                backend.close()
                raise
        return backend

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def infer(self, face: np.ndarray | None, mel: np.ndarray) -> np.ndarray:
        check_request(self._spec, face, mel)
        return run_in_batches(face, mel, self._spec.max_batch_size, self._run)

    def _run(self, face: np.ndarray | None, mel: np.ndarray) -> np.ndarray:
        try:
            return self._session.run([self._output], model_feeds(face, mel))[0]
        except Exception as exc:  # ONNX Runtime raises private exception types
            raise InferenceError(f"generator inference failed: {exc}") from exc

    def close(self) -> None:
        self._session = None

