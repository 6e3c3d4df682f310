"""The video upload: its MP4 layout told from the first bytes, then streamed into the job or spooled to disk."""

from __future__ import annotations

import enum
from collections.abc import Callable
from pathlib import Path

from lipsync_service.logs import call_log as log
from lipsync_service.media.pipe import ByteStream
from lipsync_service.media.probe import classify_mp4
from lipsync_service.server.budget import StreamBudget
from lipsync_service.server.feeder import Feeder
from lipsync_service.server.spool import Spool
from lipsync_service.settings import Settings


class VideoMode(enum.Enum):
    """How the video reaches the job; the values are what the request_finished log line prints."""

    STREAMING = "streaming"  # faststart or fragmented MP4: the job starts while it uploads
    TRANSACTIONAL = "transactional"  # index at the end (or undecided): spooled, the job starts once it is complete


class VideoIntake:
    """Routes video chunks: held until the layout is known, then fed to a running job or spooled."""

    def __init__(self, settings: Settings, start_job: Callable[[ByteStream | Path], None],
                 on_wait: Callable[[bool], None], budget: StreamBudget) -> None:
        self._settings = settings
        self._budget = budget
        self._start_job = start_job
        self._on_wait = on_wait  # told when a write waits on the job's full buffer, and when it stops
        self.mode: VideoMode | None = None  # None until classified
        self.bytes = 0
        self.feed: Feeder | None = None  # streaming: the running job's input
        self._head = bytearray()  # the first bytes, while they do not decide the layout
        self._spool: Spool | None = None
        budget.hold("video header held until its layout is known", lambda: len(self._head))

    async def take(self, data: bytes) -> None:
        s = self._settings
        self.bytes += len(data)
        if self.mode is VideoMode.STREAMING:
            assert self.feed is not None
            await self.feed.write(data, self._on_wait)
            return
        if self.mode is VideoMode.TRANSACTIONAL:
            assert self._spool is not None
            self._spool.write(data)
            return
        self._head += data
        layout = classify_mp4(bytes(self._head))
        if layout == "need_more":
            if len(self._head) < s.stream_buffer_bytes:
                return
            # A header this long before the index: not worth holding in memory; spool it.
            layout = "transactional"
        head, self._head = bytes(self._head), bytearray()
        if layout == "streamable":
            self.mode = VideoMode.STREAMING
            log.debug("video is streamable: processing while it uploads")
            stream = ByteStream(s.stream_buffer_bytes, name="video")
            self.feed = Feeder(stream, self._budget)
            stream.write(head)
            self._start_job(stream)
        else:
            self.mode = VideoMode.TRANSACTIONAL
            log.debug("video is not streamable (index at the end): spooling it until the upload completes")
            self._spool_head(head)

    def finish(self) -> None:
        """The upload is complete: spool a video whose layout is still undecided; start the job on a spooled one."""
        if self.mode is None:
            # The upload ended before its layout could be told: let the demuxer judge the whole file.
            self.mode = VideoMode.TRANSACTIONAL
            self._spool_head(bytes(self._head))
        if self.mode is VideoMode.TRANSACTIONAL:
            assert self._spool is not None
            self._spool.close()
            self._start_job(self._spool.path)

    def remove_spool(self) -> None:
        if self._spool is not None:
            self._spool.remove()

    def _spool_head(self, head: bytes) -> None:
        self._spool = Spool(self._settings)
        self._head = bytearray()
        self._spool.write(head)
