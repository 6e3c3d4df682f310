"""The disk file a non-streamable MP4 upload is spooled to until it is complete."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO

from lipsync_service.errors import ResourceExhausted
from lipsync_service.logs import call_log as log
from lipsync_service.settings import Settings


def _failed(exc: OSError) -> ResourceExhausted:
    return ResourceExhausted(f"video: spooling the upload failed: {exc.strerror or exc}")


class Spool:
    """An upload on disk: created in spool_dir, bounded by max_spool_bytes, removed when the call ends."""

    def __init__(self, settings: Settings) -> None:
        """Create the file. Raises ResourceExhausted where it cannot be created."""
        self._settings = settings
        directory = settings.spool_dir
        try:
            if directory is not None:
                Path(directory).mkdir(parents=True, exist_ok=True)
            self._file: IO[bytes] = tempfile.NamedTemporaryFile(  # noqa: SIM115 - open until close()
                dir=directory, prefix="lipsync-spool-", suffix=".mp4", delete=False)
        except OSError as exc:
            raise ResourceExhausted(f"cannot create a spool file for the upload in "
                                    f"{directory or tempfile.gettempdir()}: {exc.strerror or exc}") from exc
        self.path = Path(self._file.name)
        self._removed = False

    def write(self, data: bytes) -> None:
        limit = self._settings.max_spool_bytes
        if self._file.tell() + len(data) > limit:
            raise ResourceExhausted(
                f"video: a non-streamable MP4 is spooled to disk and this one is over the limit of {limit} bytes; "
                "move its index to the front (ffmpeg -i in.mp4 -c copy -movflags +faststart out.mp4) so it streams")
        try:
            self._file.write(data)
        except OSError as exc:
            raise _failed(exc) from exc

    def close(self) -> None:
        """The upload is complete: flush the file so the job can read it from `path`."""
        try:
            self._file.close()
        except OSError as exc:
            raise _failed(exc) from exc

    def remove(self) -> None:
        """Close and delete the file (after success or failure); a second call does nothing."""
        try:
            self._file.close()
        except OSError:
            pass
        if self._removed:
            return
        self._removed = True
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("could not remove spool file %s: %s", self.path, exc)
