"""HTTP side on asyncio streams: liveness, readiness and Prometheus metrics (GET only, one request per connection)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from lipsync_service.server.metrics import Metrics

log = logging.getLogger(__name__)

# A health probe or a scraper sends a few hundred bytes; anything far larger is not a client of ours.
MAX_HEAD_BYTES = 16 * 1024
READ_TIMEOUT_S = 5.0

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


class HttpServer:
    """Serves /v1/health/live, /v1/health/ready and /v1/metrics."""

    def __init__(self, host: str, port: int, metrics: Metrics, is_ready: Callable[[], bool]) -> None:
        """Args:
            host, port: where to listen (port 0 picks a free one; see `port` after start).
            metrics: rendered at /v1/metrics.
            is_ready: True while the service accepts streams (warmed up and not draining).
        """
        self.host = host
        self.port = port
        self._metrics = metrics
        self._is_ready = is_ready
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_HEAD_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("HTTP health and metrics on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _route(self, method: str, path: str) -> tuple[int, bytes, str]:
        path = path.split("?", 1)[0]
        routes = {"/v1/health/live", "/v1/health/ready", "/v1/metrics"}
        if path not in routes:
            return 404, b"not found; try /v1/health/live, /v1/health/ready or /v1/metrics\n", "text/plain"
        if method not in ("GET", "HEAD"):
            return 405, b"only GET is supported\n", "text/plain"
        if path == "/v1/health/live":
            return 200, b'{"status": "live"}\n', "application/json"
        if path == "/v1/health/ready":
            if self._is_ready():
                return 200, b'{"status": "ready"}\n', "application/json"
            return 503, b'{"status": "not ready"}\n', "application/json"
        body, ctype = self._metrics.render()
        return 200, body, ctype

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method = "GET"
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            except asyncio.LimitOverrunError:
                status, body, ctype = 431, b"request head too large\n", "text/plain"
            except asyncio.IncompleteReadError:
                return  # the peer closed before sending a whole request: nothing to answer
            except asyncio.TimeoutError:
                status, body, ctype = 408, b"request not received in time\n", "text/plain"
            else:
                parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
                if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                    status, body, ctype = 400, b"malformed request line\n", "text/plain"
                else:
                    method = parts[0].upper()
                    try:
                        status, body, ctype = self._route(method, parts[1])
                    except Exception:  # noqa: BLE001 - a probe must get an answer, never a dropped socket
                        log.exception("HTTP handler failed")
                        status, body, ctype = 500, b"internal error\n", "text/plain"
            header = (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                      f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("latin-1")
            writer.write(header if method == "HEAD" else header + body)
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT_S)
        except (ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
