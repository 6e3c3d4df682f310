"""The LipSyncService gRPC servicer: one Session per call, our exceptions mapped to status codes in one place."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable

import grpc

from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2, lipsync_pb2_grpc
from lipsync_service.core.factory import ProcessorFactory
from lipsync_service.errors import LipsyncError
from lipsync_service.logs import request_id_var
from lipsync_service.server.admission import Admission
from lipsync_service.server.metrics import Metrics
from lipsync_service.server.session import Session
from lipsync_service.server.status import status_for
from lipsync_service.settings import Settings

log = logging.getLogger(__name__)

StreamHandler = Callable[..., AsyncIterator[lipsync_pb2.LipsyncResponse]]


def stream_errors(handler: StreamHandler) -> StreamHandler:
    """Turn our exceptions into gRPC statuses for a response-streaming handler.

    LipsyncError subclasses get the code from server/status.py and their message verbatim, with no traceback in
    the log when the client caused them (the call's request_finished line says what happened); those that map to
    INTERNAL (an encoder or backend failure) are ours and are logged with their traceback. Anything else is a bug:
    logged with its traceback, reported as INTERNAL with the request id to quote.
    """

    @functools.wraps(handler)
    async def wrapper(self: object, request_iterator: object,
                      context: grpc.aio.ServicerContext) -> AsyncIterator[lipsync_pb2.LipsyncResponse]:
        try:
            async for response in handler(self, request_iterator, context):
                yield response
        except LipsyncError as exc:
            code = status_for(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.error("internal error: %s", exc.detail or exc, exc_info=exc)
            await context.abort(code, str(exc))
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            log.exception("unexpected failure")
            await context.abort(grpc.StatusCode.INTERNAL,
                                f"internal error ({type(exc).__name__}); quote request id {request_id_var.get()}")

    return wrapper


class LipSyncServicer(lipsync_pb2_grpc.LipSyncServiceServicer):
    """Thin: builds a Session per call and streams its responses."""

    def __init__(self, settings: Settings, processors: ProcessorFactory, admission: Admission,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.processors = processors
        self.admission = admission
        self.metrics = metrics

    def _session_id(self, context: grpc.aio.ServicerContext) -> str:
        key = self.settings.session_id_metadata_key.lower()
        for name, value in context.invocation_metadata() or ():
            if name == key:
                return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        return ""

    @stream_errors
    async def Lipsync(self, request_iterator: AsyncIterator[lipsync_pb2.LipsyncRequest],  # noqa: N802 - gRPC name
                      context: grpc.aio.ServicerContext) -> AsyncIterator[lipsync_pb2.LipsyncResponse]:
        session = Session(self.settings, self.processors, self.admission, self.metrics,
                          client_session_id=self._session_id(context), context=context)
        async for response in session.run(request_iterator):
            yield response
