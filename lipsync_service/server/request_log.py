"""The call's logger, and the structured `request_finished` line that ends each call, with its metrics."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

import grpc

from lipsync_service.server.metrics import Metrics

if TYPE_CHECKING:
    from lipsync_service.pipeline import JobResult
    from lipsync_service.server.video_intake import VideoMode

# Every line of a call, from whichever server module, logs under the session's name: one logger level or
# filter covers the whole call, as it did when the session was one module.
log = logging.getLogger("lipsync_service.server.session")


def log_request_finished(metrics: Metrics, *, request_id: str, client_session_id: str, outcome: grpc.StatusCode,
                         message: str, started: float, admitted_at: float | None,
                         first_chunk_at: float | None, video_mode: VideoMode | None, input_bytes: dict[str, int],
                         output_bytes: int, frames_reported: int, result: JobResult | None) -> None:
    """Record the call's metrics and log its one `request_finished` JSON line.

    `started`, `admitted_at` and `first_chunk_at` are time.monotonic() readings (None: the call never got
    that far); `frames_reported` is what progress reports already added to frames_processed; `result` is
    None unless the job finished.
    """
    elapsed = time.monotonic() - started
    metrics.streams_total.labels(code=outcome.name).inc()
    metrics.request_seconds.observe(elapsed)
    stages: dict[str, float] = {}
    frames = frames_reported
    if result is not None:
        stages = dict(result.stage_seconds)
        frames = result.frames
        for stage, seconds in stages.items():
            metrics.stage_seconds.labels(stage=stage).observe(seconds)
            if frames:
                metrics.stage_frame_seconds.labels(stage=stage).observe(seconds / frames)
        if frames > frames_reported:
            metrics.frames_processed.inc(frames - frames_reported)
    record = {
        "event": "request_finished",
        "request_id": request_id,
        "client_session_id": client_session_id,
        "outcome": outcome.name,
        "message": message,
        "duration_s": round(elapsed, 3),
        "queued_s": None if admitted_at is None else round(admitted_at - started, 3),
        "time_to_first_chunk_s": None if first_chunk_at is None else round(first_chunk_at - started, 3),
        "video_mode": None if video_mode is None else video_mode.value,
        "input_bytes": input_bytes,
        "output_bytes": output_bytes,
        "frames": frames,
        "stage_seconds": {k: round(v, 3) for k, v in stages.items()},
    }
    log.info("%s", json.dumps(record, sort_keys=True))
