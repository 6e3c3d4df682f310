"""Logging set-up: every line logged while serving a request starts with its server request id."""

from __future__ import annotations

import contextvars
import logging
import sys

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# Every line of a call, from whichever server module, logs under the session's name: one logger level or filter
# covers the whole call, as it did when the session was one module. It lives here, below every server module,
# so none of them imports another just for the logger.
CALL_LOGGER = "lipsync_service.server.session"
call_log = logging.getLogger(CALL_LOGGER)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def configure(level: str = "INFO") -> None:
    """Install one stream handler whose lines carry the current request id."""
    root = logging.getLogger()
    if any(getattr(h, "_lipsync", False) for h in root.handlers):
        root.setLevel(level.upper())
        return
    handler = logging.StreamHandler(sys.stderr)
    # Our marker on a stdlib handler (checked above), so a second configure() adds no second handler.
    handler._lipsync = True  # type: ignore[attr-defined]
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(logging.Formatter("[%(request_id)s] %(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
