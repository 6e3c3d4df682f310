"""ONNX Runtime sessions for the small CPU networks that ship inside the package (face detector, face mesh)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lipsync_service.errors import InternalError


def cpu_session(path: Path, threads: int, what: str) -> Any:
    """An ONNX Runtime CPU session for a packaged network, quiet and with a fixed thread count.

    Args:
        path: the .onnx file.
        threads: intra-op threads (one stream's share of the cores; streams run side by side).
        what: the network's name for the error message.

    Raises:
        InternalError: the file is missing or unreadable (a broken installation).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types; this is an installation fault
        raise InternalError(f"{what} could not be loaded from {path.name}: {exc}") from exc
