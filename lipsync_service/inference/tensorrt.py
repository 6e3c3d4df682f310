"""Embedded TensorRT backend and engine builder (GPU hosts without Triton); tensorrt and pycuda load lazily.

Either generator contract (RGB_FACE or LIP_SHAPE) is served; the backend reads it from the engine's tensor names.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from lipsync_service.errors import InferenceError, InferenceUnavailable, InvalidInput
from lipsync_service.inference.base import (
    GeneratorBackend,
    ModelSpec,
    OutputContract,
    check_request,
    contract_of,
    model_feeds,
    run_in_batches,
    sizes_label,
    sizes_of,
)
from lipsync_service.inference.repository import inspect_onnx

_WORKSPACE_BYTES = 2 << 30


def _need_tensorrt() -> tuple[ModuleType, ModuleType]:
    """Import tensorrt and pycuda (the modules: tensorrt, pycuda.driver), or say what is missing."""
    try:
        # tensorrt first: when both are missing, the message names it.
        import tensorrt as trt  # isort: skip
        import pycuda.driver as cuda
    except ImportError as exc:
        raise InferenceUnavailable(
            f"the TensorRT backend needs CUDA, the tensorrt and pycuda packages (pip install '.[gpu]'): {exc}"
        ) from exc
    try:
        cuda.init()
        if cuda.Device.count() < 1:
            raise InferenceUnavailable("the TensorRT backend needs a CUDA GPU; none is visible")
    except cuda.Error as exc:
        raise InferenceUnavailable(f"CUDA is not usable on this host: {exc}") from exc
    return trt, cuda


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def engine_cache_key(onnx_sha256: str, tensorrt_version: str, gpu_name: str, max_batch: int, fp16: bool) -> str:
    """Cache key of an engine: an engine is valid only for one model, TensorRT version, GPU model and profile.

    Args:
        onnx_sha256: hash of the ONNX file.
        tensorrt_version: tensorrt.__version__.
        gpu_name: the CUDA device name, e.g. "NVIDIA H100 80GB HBM3".
        max_batch: top of the batch optimisation profile.
        fp16: whether FP16 kernels were allowed.

    Returns:
        A file-name-safe key, readable at a glance and unique through a hash of all fields.
    """
    fields = f"{onnx_sha256}|{tensorrt_version}|{gpu_name}|{max_batch}|{int(fp16)}"
    digest = hashlib.sha256(fields.encode()).hexdigest()[:16]
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower() or "gpu"
    return f"{onnx_sha256[:12]}-trt{tensorrt_version}-{gpu}-b{max_batch}-{'fp16' if fp16 else 'fp32'}-{digest}"


def engine_cache_path(cache_dir: Path, key: str) -> Path:
    """Where the engine for a key is stored."""
    return Path(cache_dir) / f"{key}.engine"


def engine_contract(engine: Any, trt: ModuleType) -> OutputContract:
    """The contract of a deserialized engine, from the names of its input and output tensors.

    Raises:
        InferenceError: names that fit no contract.
    """
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    return contract_of(inputs, [n for n in names if n not in inputs])


def build_engine(onnx_path: Path, max_batch: int, fp16: bool = True, cache_dir: Path | None = None) -> Path:
    """Build (or reuse from the cache) a TensorRT engine for an ONNX generator of either contract.

    The optimisation profile covers batch 1..max_batch (optimum at max_batch) for every input of the
    model's contract; the engine is cached under
    engine_cache_key(ONNX hash, TensorRT version, GPU name, max_batch, fp16).

    Args:
        onnx_path: the generator's ONNX file.
        max_batch: the largest batch the engine accepts.
        fp16: allow FP16 kernels (inputs and outputs stay FP32).
        cache_dir: engine cache folder (default ~/.cache/lipsync-service/engines).

    Returns:
        The engine file.

    Raises:
        InferenceUnavailable: no CUDA GPU, or tensorrt/pycuda missing.
        InvalidInput: the ONNX file breaks its contract or TensorRT cannot parse or build it.
        InferenceError: its tensor names fit no contract.
    """
    trt, cuda = _need_tensorrt()
    onnx_path = Path(onnx_path)
    found = inspect_onnx(onnx_path)
    contract, size = found.contract, found.face_size
    cache_dir = Path(cache_dir or Path.home() / ".cache" / "lipsync-service" / "engines")
    key = engine_cache_key(file_sha256(onnx_path), trt.__version__, cuda.Device(0).name(), max_batch, fp16)
    target = engine_cache_path(cache_dir, key)
    if target.is_file():
        return target
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Explicit batch is the only mode in TensorRT 10 (flag 0); TensorRT 8 needs the flag.
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InvalidInput(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, _WORKSPACE_BYTES)
    # platform_has_fast_fp16 is deprecated in TensorRT 10 (every supported GPU has FP16).
    if fp16 and getattr(builder, "platform_has_fast_fp16", True):
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    dims_of = contract.dims(size)
    for name in contract.inputs:
        dims = dims_of[name]
        profile.set_shape(name, (1, *dims), (max_batch, *dims), (max_batch, *dims))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise InvalidInput(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    with open(partial, "wb") as handle:
        handle.write(serialized)
    os.replace(partial, target)  # atomic: concurrent builders never see half an engine
    return target


class TensorRTBackend(GeneratorBackend):
    """Runs a TensorRT engine with pycuda in this process; one execution context, calls serialised."""

    def __init__(self, engine_path: Path, name: str = "lipsync_generator", description: str = "") -> None:
        """Load an engine.

        Args:
            engine_path: a serialized engine from build_engine.
            name: model name for the spec.
            description: text for model_info.

        Raises:
            InferenceUnavailable: no GPU, missing packages, or an engine that does not deserialize or whose
                shapes break its contract.
            InferenceError: tensor names that fit no contract.
        """
        trt, cuda = _need_tensorrt()
        self._cuda = cuda
        self._ctx = cuda.Device(0).retain_primary_context()
        self._ctx.push()
        try:
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self._engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
            if self._engine is None:
                raise InferenceUnavailable(
                    f"cannot load TensorRT engine {engine_path} (built by another TensorRT version or GPU?)"
                )
            self._contract = contract = engine_contract(self._engine, trt)
            # Per-item dims; the batch axis (-1 in the engine) is bounded by the optimisation profile.
            dims = {name: tuple(self._engine.get_tensor_shape(name))[1:] for name in contract.dims(0)}
            sizes = sizes_of(contract, dims)
            if sizes is None:
                raise InferenceUnavailable(
                    f"TensorRT engine {engine_path} tensors {dims} do not match the {contract.value} contract: "
                    f"{contract.signature()}"
                )
            self._size = sizes.face_size
            self._max_batch = int(self._engine.get_tensor_profile_shape(contract.inputs[0], 0)[2][0])
            self._context = self._engine.create_execution_context()
            self._stream = cuda.Stream()
            shapes = {name: (self._max_batch, *item)
                      for name, item in contract.dims(sizes.face_size, sizes.shape_columns).items()}
            # Page-locked host staging buffers: required for truly asynchronous copies.
            self._host = {name: cuda.pagelocked_empty(shape, np.float32) for name, shape in shapes.items()}
            self._buffers = {name: cuda.mem_alloc(host.nbytes) for name, host in self._host.items()}
            for tensor, buffer in self._buffers.items():
                self._context.set_tensor_address(tensor, int(buffer))
        finally:
            self._ctx.pop()
        self._lock = threading.Lock()
        shape = sizes_label(contract, sizes)
        self._spec = ModelSpec(
            name=name,
            face_size=self._size,
            shape_columns=sizes.shape_columns,
            max_batch_size=self._max_batch,
            description=f"{name}: {description or 'generator'} (tensorrt {trt.__version__}, {shape})",
            contract=contract,
        )

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def infer(self, face: np.ndarray | None, mel: np.ndarray) -> np.ndarray:
        check_request(self._spec, face, mel)
        return run_in_batches(face, mel, self._max_batch, self._run)

    def _run(self, face: np.ndarray | None, mel: np.ndarray) -> np.ndarray:
        cuda = self._cuda
        batch = mel.shape[0]
        host = self._host
        output = self._contract.output
        with self._lock:
            self._ctx.push()
            try:
                for tensor, array in model_feeds(face, mel).items():
                    host[tensor][:batch] = array
                    self._context.set_input_shape(tensor, tuple(array.shape))
                    cuda.memcpy_htod_async(self._buffers[tensor], host[tensor][:batch], self._stream)
                if not self._context.execute_async_v3(self._stream.handle):
                    raise InferenceError("TensorRT execution failed (see the TensorRT log)")
                cuda.memcpy_dtoh_async(host[output][:batch], self._buffers[output], self._stream)
                self._stream.synchronize()
                out = host[output][:batch].copy()
            except cuda.Error as exc:
                raise InferenceError(f"CUDA error during generator inference: {exc}") from exc
            finally:
                self._ctx.pop()
        return out

    def close(self) -> None:
        ctx = getattr(self, "_ctx", None)
        if ctx is None:
            return
        ctx.push()
        try:
            for buffer in self._buffers.values():
                buffer.free()
            self._context = None
            self._engine = None
        finally:
            ctx.pop()
            ctx.detach()
            self._ctx = None
