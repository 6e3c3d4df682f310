"""Server assembly: the grpc.aio server (LipSyncService, health, reflection, TLS), the HTTP side, drain."""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import signal
import threading
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2, lipsync_pb2_grpc
from lipsync_service.core.factory import ProcessorFactory
from lipsync_service.errors import Unavailable
from lipsync_service.inference.describe import describe_model
from lipsync_service.inference.repository import ModelSelectionError
from lipsync_service.server.admission import Admission
from lipsync_service.server.heap import limit_arenas, use_malloc_for_python
from lipsync_service.server.http import HttpServer
from lipsync_service.server.metrics import Metrics, default_metrics
from lipsync_service.server.servicer import LipSyncServicer
from lipsync_service.server.threads import start_thread
from lipsync_service.settings import Settings, SslMode

log = logging.getLogger(__name__)

SERVICE_NAME = lipsync_pb2.DESCRIPTOR.services_by_name["LipSyncService"].full_name
# Seconds between warm-up attempts while the inference backend is unreachable (e.g. Triton still starting).
WARMUP_RETRY_S = 5.0
# Seconds between checks of an inference backend that a stream found unreachable, until it answers again.
BACKEND_PROBE_S = 2.0
# Protobuf framing around a chunk's payload, so a payload of exactly max_message_bytes is accepted.
_FRAMING_BYTES = 1024


class StartupError(Exception):
    """The server cannot start as configured (bad TLS files, port in use, model not loadable)."""


def _read(path: Path | None, env: str, mode: str) -> bytes:
    if path is None:
        raise StartupError(f"NIM_SSL_MODE={mode} needs {env}")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise StartupError(f"{env}={path}: cannot read it ({exc.strerror or exc})") from exc
    if not data.strip():
        raise StartupError(f"{env}={path}: the file is empty")
    return data


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials per settings.ssl_mode; None when TLS is disabled.

    Raises:
        StartupError: a required certificate, key or CA file is not set or cannot be read.
    """
    mode = settings.ssl_mode
    if mode is SslMode.DISABLED:
        return None
    cert = _read(settings.ssl_cert_path, "NIM_SSL_CERT_PATH", mode.value)
    key = _read(settings.ssl_key_path, "NIM_SSL_KEY_PATH", mode.value)
    if mode is SslMode.TLS:
        return grpc.ssl_server_credentials([(key, cert)])
    ca = _read(settings.ssl_ca_path, "NIM_SSL_CA_PATH", mode.value)
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


class LipsyncServer:
    """The whole service in one event loop: gRPC on grpc_port, HTTP on http_port.

    Lifecycle: `await start()` (listens at once, health NOT_SERVING until the processor is warmed up),
    `await drain(timeout)` (refuse new streams, wait for running ones), `await stop()`.

    Readiness follows the inference backend: when a stream finds it unreachable (e.g. Triton died), that
    stream ends with UNAVAILABLE naming the server, gRPC health and /v1/health/ready turn NOT_SERVING, and a
    probe (one blank generator call every BACKEND_PROBE_S) turns them back to SERVING once it answers. New
    streams are still accepted meanwhile (they fail the same way if they need the generator); liveness
    (/v1/health/live) stays green, since restarting this process would not bring the backend back.
    """

    def __init__(self, settings: Settings, *, processors: ProcessorFactory | None = None,
                 metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or default_metrics()
        self.processors = processors or ProcessorFactory(settings, observe=self.metrics.observe_inference)
        self.grpc_port = settings.grpc_port
        self.http_port = settings.http_port
        self.admission: Admission | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self._http: HttpServer | None = None
        self._ready = False
        self._draining = False
        self._stopped = asyncio.Event()
        self._warmup_retry: asyncio.Task | None = None
        self._backend_down = False
        self._backend_watch: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def ready(self) -> bool:
        """True once warmed up, until draining starts; false while the inference backend is unreachable."""
        return self._ready and not self._draining and not self._backend_down

    async def start(self) -> None:
        """Listen on both ports, warm up the processor, then report SERVING.

        Raises:
            StartupError: TLS files, ports or the processor are not usable, or NIM_TAGS_SELECTOR matches no model.
        """
        s = self.settings
        credentials = server_credentials(s)
        self._loop = asyncio.get_running_loop()
        self.processors.on_backend_unavailable = self._backend_unavailable
        self.admission = Admission(s.max_concurrent_streams, s.max_queued_streams, s.admission_timeout_s,
                                   on_change=self.metrics.set_admission)
        options = [
            ("grpc.max_receive_message_length", s.max_message_bytes + _FRAMING_BYTES),
            ("grpc.max_send_message_length", max(s.output_chunk_bytes + _FRAMING_BYTES, 4 * 1024 * 1024)),
            # Long calls with quiet periods: let clients ping (every 10 s at most) ...
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            # ... and ping them, so a client that vanished without closing its connection (no input stall
            # once it half-closed, output blocked by flow control) is detected and its slot freed.
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
        ]
        self._server = grpc.aio.server(options=options)
        lipsync_pb2_grpc.add_LipSyncServiceServicer_to_server(
            LipSyncServicer(s, self.processors, self.admission, self.metrics), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._server)
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{s.host}:{s.grpc_port}"
        try:
            if credentials is None:
                port = self._server.add_insecure_port(address)
            else:
                port = self._server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise StartupError(f"cannot listen for gRPC on {address}: {exc}") from exc
        if port == 0:
            raise StartupError(f"cannot listen for gRPC on {address} (port in use?)")
        self.grpc_port = port
        await self._server.start()
        self._http = HttpServer(s.host, s.http_port, self.metrics, lambda: self.ready)
        try:
            await self._http.start()
        except OSError as exc:
            await self._server.stop(0)
            raise StartupError(f"cannot listen for HTTP on {s.host}:{s.http_port}: {exc.strerror or exc}") from exc
        self.http_port = self._http.port
        log.info("gRPC on %s:%d (TLS %s); warming up the %s processor", s.host, self.grpc_port, s.ssl_mode.value,
                 s.processor)
        try:
            await self._warm_up()
        except Unavailable as exc:
            # The backend may come up later (Triton starting beside us): stay up, not ready, and retry.
            log.warning("warm-up failed, retrying every %g s while NOT_SERVING: %s", WARMUP_RETRY_S, exc)
            self._warmup_retry = asyncio.create_task(self._retry_warm_up(), name="lipsync-warmup-retry")
        except ModelSelectionError as exc:
            # NIM_TAGS_SELECTOR names no model there is: a configuration error no retry mends.
            await self.stop()
            raise StartupError(str(exc)) from exc
        except Exception as exc:
            await self.stop()
            raise StartupError(f"warm-up failed: {exc}") from exc

    async def _warm_up(self) -> None:
        """Build the first processor off the event loop, then report SERVING."""
        thread, warmed = start_thread(self.processors.warm_up, "lipsync-warmup")
        try:
            await warmed
        finally:
            thread.join()
        if self._draining:
            return
        self._ready = True
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("ready: %s", describe_model(self.settings, self.processors.model_spec))

    async def _retry_warm_up(self) -> None:
        while not self._draining:
            await asyncio.sleep(WARMUP_RETRY_S)
            try:
                await self._warm_up()
                return
            except Exception as exc:  # noqa: BLE001 - keep trying; the log says why it is not ready
                log.warning("warm-up failed again: %s", exc)

    def _backend_unavailable(self, exc: Exception) -> None:
        """From a stream's thread: the inference backend did not answer; go NOT_SERVING until it does."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._mark_backend_down, str(exc))
            except RuntimeError:
                pass  # the loop is shutting down

    def _mark_backend_down(self, reason: str) -> None:
        # Readiness (gRPC health, /v1/health/ready) goes false so load balancers send new streams to replicas
        # whose backend answers; liveness (/v1/health/live) stays green: restarting us would not bring it back.
        if self._backend_down or not self._ready or self._draining:
            return
        self._backend_down = True
        log.warning("inference backend unreachable, NOT_SERVING until it answers (checked every %g s): %s",
                    BACKEND_PROBE_S, reason)
        self._backend_watch = asyncio.create_task(self._watch_backend(), name="lipsync-backend-watch")

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self._health.set(name, status)

    async def _watch_backend(self) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        while not self._draining:
            await asyncio.sleep(BACKEND_PROBE_S)
            # A daemon thread: if shutdown cancels us mid-probe, it ends by itself at the backend's deadline.
            _, probed = start_thread(self.processors.probe, "lipsync-backend-probe")
            try:
                await probed
            except Exception as exc:  # noqa: BLE001 - still down: keep checking, the log says why
                log.info("inference backend still unreachable: %s", exc)
                continue
            if self._draining:
                return
            self._backend_down = False
            await self._set_health(health_pb2.HealthCheckResponse.SERVING)
            log.info("inference backend answers again: SERVING")
            return

    async def drain(self, timeout: float | None = None) -> bool:
        """Stop taking streams (health NOT_SERVING, new calls UNAVAILABLE) and wait for running ones.

        Args:
            timeout: seconds to wait; settings.drain_timeout_s when None.

        Returns:
            True if every stream finished in time.
        """
        timeout = self.settings.drain_timeout_s if timeout is None else timeout
        self._draining = True
        await self._health.enter_graceful_shutdown()
        if self.admission is None:
            return True
        self.admission.start_draining()
        log.info("draining: waiting up to %g s for %d running stream(s)", timeout, self.admission.active)
        finished = await self.admission.wait_idle(timeout)
        if not finished:
            log.warning("drain timeout: %d stream(s) still running are cancelled", self.admission.active)
        return finished

    async def stop(self, grace: float | None = 0) -> None:
        """Close both ports; calls still running are cancelled after `grace` seconds."""
        if self._warmup_retry is not None:
            self._warmup_retry.cancel()
            try:
                await self._warmup_retry
            except BaseException:  # noqa: BLE001 - cancelled, or its last attempt failed: moot now
                pass
            self._warmup_retry = None
        if self._backend_watch is not None:
            self._backend_watch.cancel()
            try:
                await self._backend_watch
            except BaseException:  # noqa: BLE001 - cancelled: moot at shutdown
                pass
            self._backend_watch = None
        if self._http is not None:
            await self._http.stop()
            self._http = None
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        self.processors.close()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def serve_async(settings: Settings, stop: asyncio.Event | None = None) -> int:
    """Run the service until SIGTERM/SIGINT (or `stop` is set), then drain and exit.

    Returns:
        0 after a drain, whether or not every stream finished in time.
    """
    server = LipsyncServer(settings)
    await server.start()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutdown requested")
    await server.drain()
    await server.stop(grace=1.0)
    log.info("stopped")
    return 0


def serve(settings: Settings) -> int:
    """Blocking entry point of `lipsync-service serve`."""
    use_malloc_for_python(settings.python_allocator, settings.pythonmalloc)
    # Before any thread of the server allocates: each would otherwise get an arena of its own.
    limit_arenas(settings.malloc_arena_max)
    # A crash inside a native library (FFmpeg, ONNX Runtime, gRPC) prints every thread's Python stack to stderr
    # before the process dies, so the log says where it happened.
    faulthandler.enable()
    return asyncio.run(serve_async(settings))
