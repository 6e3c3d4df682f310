"""Inference backends behind one interface; `build_backend(settings)` picks the one the settings name.

Every backend serves both generator contracts (base.OutputContract) and reads which one a model has from the
model itself; `backend.spec.contract` tells the caller.
"""

from __future__ import annotations

from lipsync_service.errors import InferenceUnavailable, InvalidInput
from lipsync_service.inference.base import GeneratorBackend, ModelSpec, OutputContract
from lipsync_service.settings import BackendKind, Settings

__all__ = ["GeneratorBackend", "ModelSpec", "OutputContract", "build_backend"]


def build_backend(settings: Settings) -> GeneratorBackend:
    """The generator backend selected by settings.backend.

    - onnxruntime: <model_repository>/<model_name>/<version>/model.onnx in this process.
    - triton: the model `model_name` on the Triton server at triton_url.
    - tensorrt: <version>/model.plan when present, else an engine built from model.onnx (cached in
      engine_cache_dir).

    Args:
        settings: the service settings.

    Returns:
        A ready backend.

    Raises:
        InferenceUnavailable: the model or server cannot be used; the message says why.
    """
    if settings.backend is BackendKind.ONNXRUNTIME:
        from lipsync_service.inference.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend.from_repository(
            settings.model_repository,
            settings.model_name,
            settings.model_version,
            max_batch_size=settings.max_batch_size,
            intra_op_threads=settings.ort_threads,
        )
    if settings.backend is BackendKind.TRITON:
        from lipsync_service.inference.triton import TritonBackend

        return TritonBackend(
            settings.triton_url,
            settings.model_name,
            settings.model_version,
            timeout_s=settings.triton_timeout_s,
            max_batch_size=settings.max_batch_size,
            shm=settings.triton_shm,
        )
    if settings.backend is BackendKind.TENSORRT:
        from lipsync_service.inference import repository
        from lipsync_service.inference.tensorrt import TensorRTBackend, build_engine

        try:
            version_dir = repository.model_version_dir(
                settings.model_repository, settings.model_name, settings.model_version
            )
            plan = version_dir / repository.PLAN_FILE
            if not plan.is_file():
                plan = build_engine(
                    version_dir / repository.ONNX_FILE,
                    settings.max_batch_size,
                    fp16=True,
                    cache_dir=settings.engine_cache_dir,
                )
        except InvalidInput as exc:
            raise InferenceUnavailable(str(exc)) from exc
        return TensorRTBackend(plan, name=settings.model_name)
    raise InferenceUnavailable(f"unknown inference backend {settings.backend!r}")
