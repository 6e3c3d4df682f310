"""Functional test helpers: the real server in-process on free ports, request builders, response collection."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from lipsync_service._proto.nvidia.ai4m.audio.v1 import audio_pb2
from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2, lipsync_pb2_grpc
from lipsync_service.client.stream import LipsyncResult, collect  # noqa: F401 - re-exported for the tests
from lipsync_service.server.app import LipsyncServer
from lipsync_service.server.metrics import Metrics
from lipsync_service.settings import Settings

CHUNK = 64 * 1024
# Fuzz cases tried in this test session, by "count" and "target:STATUS" (reported by conftest.py).
FUZZ_STATS: dict[str, int] = {}


class ServerThread:
    """A LipsyncServer running on its own event loop in a background thread."""

    def __init__(self, settings: Settings, processors: Any = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.loop = asyncio.new_event_loop()
        self.server = LipsyncServer(settings, metrics=self.metrics, processors=processors)
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-server-loop", daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        self.call(self.server.start(), timeout=60)
        return self

    def call(self, coro: Any, timeout: float | None = 30) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        try:
            self.call(self.server.stop(0), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    def channel(self, **options: Any) -> grpc.Channel:
        opts = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024)]
        return grpc.insecure_channel(self.target, options=opts + list(options.items()))

    def stub(self, channel: grpc.Channel | None = None) -> lipsync_pb2_grpc.LipSyncServiceStub:
        return lipsync_pb2_grpc.LipSyncServiceStub(channel or self.channel())


def server_settings(**overrides: Any) -> Settings:
    """Settings for an in-process server: loopback, free ports, pass-through processor, short timers."""
    base: dict[str, Any] = dict(host="127.0.0.1", grpc_port=0, http_port=0, processor="passthrough",
                                keepalive_interval_s=1.0, input_queue_timeout_s=10.0, admission_timeout_s=5.0)
    base.update(overrides)
    return Settings(**base)


@contextmanager
def running_server(**overrides: Any) -> Iterator[ServerThread]:
    """Start a server with `server_settings(**overrides)`, stop it afterwards."""
    srv = ServerThread(server_settings(**overrides)).start()
    try:
        yield srv
    finally:
        srv.stop()


# Requests ----------------------------------------------------------------------------------------

def config(**fields: Any) -> lipsync_pb2.LipsyncRequest:
    fields.setdefault("input_audio_codec", audio_pb2.AUDIO_CODEC_WAV)
    return lipsync_pb2.LipsyncRequest(config=lipsync_pb2.LipsyncConfig(**fields))


def chunks(data: bytes, size: int = CHUNK) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def video_msg(data: bytes) -> lipsync_pb2.LipsyncRequest:
    return lipsync_pb2.LipsyncRequest(input=lipsync_pb2.LipsyncInputData(video_file_data=data))


def audio_msg(data: bytes) -> lipsync_pb2.LipsyncRequest:
    return lipsync_pb2.LipsyncRequest(input=lipsync_pb2.LipsyncInputData(audio_file_data=data))


def background_msg(data: bytes) -> lipsync_pb2.LipsyncRequest:
    return lipsync_pb2.LipsyncRequest(input=lipsync_pb2.LipsyncInputData(background_audio_file_data=data))


def speaker_msg(frames: Iterable[lipsync_pb2.SpeakerInfoPerFrame]) -> lipsync_pb2.LipsyncRequest:
    data = lipsync_pb2.LipsyncInputData()
    data.per_frame_speaker_infos.extend(frames)
    return lipsync_pb2.LipsyncRequest(input=data)


def requests(video: bytes, audio: bytes, cfg: lipsync_pb2.LipsyncRequest | None = None, *,
             background: bytes | None = None, chunk: int = CHUNK, delay_s: float = 0.0,
             progress: list | None = None) -> Iterator[lipsync_pb2.LipsyncRequest]:
    """Config (if given), then video and audio chunks interleaved (then background), optionally throttled.

    Args:
        progress: if given, receives ("sent", monotonic time) after each message and ("done", time) at the end.
    """
    if cfg is not None:
        yield cfg
    v, a = chunks(video, chunk), chunks(audio, chunk)
    b = chunks(background, chunk) if background else []
    for i in range(max(len(v), len(a), len(b))):
        for parts, make in ((v, video_msg), (a, audio_msg), (b, background_msg)):
            if i < len(parts):
                if delay_s:
                    time.sleep(delay_s)
                yield make(parts[i])
                if progress is not None:
                    progress.append(("sent", time.monotonic()))
    if progress is not None:
        progress.append(("done", time.monotonic()))


# Responses ---------------------------------------------------------------------------------------

# The client's own collector: tests read responses exactly as lipsync-client does.
Result = LipsyncResult


def run_call(srv: ServerThread, reqs: Iterable[lipsync_pb2.LipsyncRequest], *, metadata: Any = None,
             timeout: float = 60) -> Result:
    with srv.channel() as channel:
        return collect(srv.stub(channel).Lipsync(iter(reqs), metadata=metadata, timeout=timeout))


def expect_error(srv: ServerThread, reqs: Iterable[lipsync_pb2.LipsyncRequest], code: grpc.StatusCode,
                 *, timeout: float = 60) -> str:
    """Run a call that must fail with `code`; returns the status message."""
    with pytest.raises(grpc.RpcError) as info:
        run_call(srv, reqs, timeout=timeout)
    err = info.value
    assert err.code() == code, f"expected {code}, got {err.code()}: {err.details()}"
    return err.details()


# Leak accounting ---------------------------------------------------------------------------------

def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def spool_files(directory: Path) -> list[Path]:
    return sorted(Path(directory).glob("lipsync-spool-*"))


def wait_until(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
