"""Inference backends behind one interface; `build_backend(settings)` picks the one the settings name.

Every backend serves both generator contracts (base.OutputContract) and reads which one a model has from the
model itself; `backend.spec.contract` tells the caller.
"""

from __future__ import annotations

import logging

from lipsync_service.errors import InferenceError, InferenceUnavailable, InvalidInput, LipsyncError, without_paths
from lipsync_service.inference.base import GeneratorBackend, ModelSpec, OutputContract
from lipsync_service.inference.repository import ModelSelectionError
from lipsync_service.settings import BackendKind, Settings

__all__ = ["GeneratorBackend", "ModelSelectionError", "ModelSpec", "OutputContract", "build_backend",
           "resolve_model_name"]

log = logging.getLogger(__name__)


def build_backend(settings: Settings) -> GeneratorBackend:
    """The generator backend selected by settings.backend, for the server: its errors name the model, never a path.

    A client sees these errors (a call that finds the model not loaded is answered UNAVAILABLE), so file-system
    paths (model repository, engine cache) are left out of the message; the full text goes to the server log.

    The model is settings.model_name, or with NIM_TAGS_SELECTOR (settings.tags_selector) the one whose tags match
    it (`resolve_model_name`).

    Args:
        settings: the service settings.

    Returns:
        A ready backend.

    Raises:
        InferenceUnavailable: the model or server cannot be used; the message says why and names the model.
        InferenceError: the model answers no generator contract.
        ModelSelectionError: NIM_TAGS_SELECTOR is malformed or matches no model (or several): a start-up error,
            not retried.
    """
    name = resolve_model_name(settings)
    if name != settings.model_name:
        settings = settings.model_copy(update={"model_name": name})
    try:
        return _build_backend(settings)
    except LipsyncError as exc:
        detail = str(exc)
        public = without_paths(detail)
        if repr(settings.model_name) not in public:
            public = f"model {settings.model_name!r}: {public}"
        log.error("generator model %r (%s backend) cannot be used: %s", settings.model_name,
                  settings.backend.value, detail)
        if isinstance(exc, InferenceError):
            raise InferenceError(public) from exc
        raise InferenceUnavailable(public) from exc


def resolve_model_name(settings: Settings) -> str:
    """The model to serve: settings.model_name, or with NIM_TAGS_SELECTOR the model whose tags match every pair.

    The candidates are the models of the local repository (onnxruntime, tensorrt: settings.model_repository), or
    those the Triton server at settings.triton_url has loaded (triton); tags are the config.pbtxt parameters
    named tag.<key> (repository.TAG_PREFIX). See repository.select_model for the matching rules.

    Raises:
        ModelSelectionError: a malformed selector, or no single matching model; the message lists the models
            and their tags.
        InferenceUnavailable: Triton cannot be asked for its models (not reachable yet).
    """
    from lipsync_service.inference import repository

    selector = repository.parse_tags_selector(settings.tags_selector)
    if not selector:
        return settings.model_name
    if settings.backend is BackendKind.TRITON:
        models = _triton_models(settings)
        where = f"Triton at {settings.triton_url}"
    else:
        models = repository.repository_models(settings.model_repository)
        where = f"the model repository {settings.model_repository}"
    name = repository.select_model(models, selector, settings.model_name, where)
    log.info("%s=%s selects the model %r", repository.SELECTOR_ENV, settings.tags_selector, name)
    return name


def _triton_models(settings: Settings) -> list:  # -> list[repository.TaggedModel]
    """The models in the Triton server's repository index, with the tags of those it has loaded."""
    import tritonclient.grpc as grpcclient

    from lipsync_service.inference.repository import TaggedModel, model_tags

    timeout = settings.triton_timeout_s
    client = grpcclient.InferenceServerClient(settings.triton_url)
    try:
        try:
            index = client.get_model_repository_index(client_timeout=timeout)
        except Exception as exc:  # tritonclient raises InferenceServerException, gRPC errors inside it
            raise InferenceUnavailable(
                f"Triton at {settings.triton_url} cannot list its models for NIM_TAGS_SELECTOR: {exc}") from exc
        models = []
        for name in sorted({m.name for m in index.models}):
            try:
                config = client.get_model_config(name, client_timeout=timeout).config
            except Exception:  # noqa: BLE001 - not loaded: listed, not selectable
                models.append(TaggedModel(name, None))
                continue
            models.append(TaggedModel(name, model_tags(config)))
        return models
    finally:
        client.close()


def _build_backend(settings: Settings) -> GeneratorBackend:
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
