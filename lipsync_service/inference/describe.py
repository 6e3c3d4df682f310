"""The one line that says which model serves: name, version, backend, output contract, description."""

from __future__ import annotations

from lipsync_service.errors import InvalidInput
from lipsync_service.inference.base import ModelSpec
from lipsync_service.settings import BackendKind, Settings


def describe_model(settings: Settings, spec: ModelSpec | None) -> str:
    """The line `run` prints and `serve` logs once its model is loaded.

    Args:
        settings: backend, version and repository.
        spec: the loaded model's spec; None for a processor without a model (passthrough).
    """
    if spec is None:
        return f"model none ({settings.processor} processor: frames are not lip-synced)"
    description = spec.description.removeprefix(f"{spec.name}: ")
    return (f"model {spec.name} {_version(settings, spec.name)} ({settings.backend.value}, "
            f"contract {spec.contract.value})" + (f": {description}" if description else ""))


def _version(settings: Settings, name: str) -> str:
    """"v<N>": the version asked for, else the latest in a local repository; "latest" when Triton chooses."""
    from lipsync_service.inference.repository import latest_version

    if settings.model_version:
        return f"v{settings.model_version}"
    if settings.backend is BackendKind.TRITON:
        return "latest"
    try:
        return f"v{latest_version(settings.model_repository / name)}"
    except InvalidInput:
        return "latest"
