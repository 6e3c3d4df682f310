"""The structured `request_finished` line that ends each call, with its metrics."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import grpc

from lipsync_service.logs import call_log as log
from lipsync_service.server.metrics import Metrics

if TYPE_CHECKING:
    from lipsync_service.pipeline import JobResult


def log_request_finished(metrics: Metrics, *, request_id: str, client_session_id: str, outcome: grpc.StatusCode,
                         message: str, started: float, admitted_at: float | None,
                         first_chunk_at: float | None, video_mode: str | None, input_bytes: dict[str, int],
                         output_bytes: int, frames_reported: int, result: JobResult | None,
                         ignored_encoder_hints: dict[str, Any] | None = None, memory_peak_bytes: int = 0) -> None:
    """Record the call's metrics and log its one `request_finished` JSON line.

    `started`, `admitted_at` and `first_chunk_at` are time.monotonic() readings (None: the call never got
    that far); `video_mode` is how the video reached the job (VideoMode's value, None before the layout was told);
    `frames_reported` is what progress reports already added to frames_processed; `result` is
    None unless the job finished; `ignored_encoder_hints` are the custom encoding keys the config accepted that
    mean nothing to x264 (NVIDIA's NVENC-only hints), key -> value; `memory_peak_bytes` is the most the call held
    on its client's behalf (server/budget.py) when it was last checked.
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
        "video_mode": video_mode,
        "input_bytes": input_bytes,
        "output_bytes": output_bytes,
        "frames": frames,
        "stage_seconds": {k: round(v, 3) for k, v in stages.items()},
        **_outcome_fields(result),
        "ignored_encoder_hints": dict(ignored_encoder_hints or {}),
        "memory_peak_bytes": memory_peak_bytes,
    }
    log.info("%s", json.dumps(record, sort_keys=True))


def _outcome_fields(result: JobResult | None) -> dict[str, object]:
    """What the job did with its frames and inputs (all None when it did not finish): frames without a face,
    with a face not lip-synced, bypassed; which input was cut ("speech" or "video") and by how many seconds."""
    if result is None:
        return dict.fromkeys(("frames_without_face", "frames_not_lipsynced", "frames_bypassed", "cut", "cut_s",
                              "shots", "frames_kept", "redrawn"))
    cut = result.cut
    return {
        "frames_without_face": result.frames_without_face,
        "frames_not_lipsynced": result.frames_not_lipsynced,
        "frames_bypassed": result.frames_bypassed,
        "shots": result.shots,
        "frames_kept": dict(result.frames_kept),
        "redrawn": [r.describe() for r in result.redrawn[:20]],
        "cut": cut.track if cut is not None else None,
        "cut_s": round(cut.seconds, 3) if cut is not None and cut.seconds is not None else None,
    }
