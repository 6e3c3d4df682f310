"""Prometheus metrics of the service, in a registry of its own (so several servers can live in one process)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Seconds: from a few milliseconds (one frame's stage) to tens of minutes (a long request).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# Seconds per frame: 4K encodes and CPU inference reach the upper buckets, pass-through the lower.
_FRAME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

STAGES = ("decode", "process", "encode")


class Metrics:
    """All metrics of one server.

    Attributes:
        streams_active: streams holding a processing slot.
        streams_queued: streams waiting in admission.
        streams_total: finished streams by gRPC status code name (OK, INVALID_ARGUMENT, ...).
        frames_processed: output frames written.
        stage_seconds: seconds spent per request in each pipeline stage (decode, process, encode).
        stage_frame_seconds: the same per output frame (a request's stage time / its frames), comparable
            across short and long requests.
        request_seconds: wall time of whole requests.
        time_to_first_chunk_seconds: from the first request message to the first output chunk.
        inference_seconds: one generator call (for the inference backends).
        inference_batch_size: frames per generator call (for the inference backends).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        if registry is None:
            # Memory, CPU and open files of the process, as the default registry would have them.
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self.streams_active = Gauge("lipsync_streams_active", "Streams holding a processing slot", registry=r)
        self.streams_queued = Gauge("lipsync_streams_queued", "Streams waiting for a processing slot", registry=r)
        self.streams_total = Counter("lipsync_streams", "Finished streams by gRPC status code", ["code"], registry=r)
        self.frames_processed = Counter("lipsync_frames_processed", "Output video frames written", registry=r)
        self.stage_seconds = Histogram("lipsync_stage_seconds", "Seconds per request spent in a pipeline stage",
                                       ["stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.stage_frame_seconds = Histogram(
            "lipsync_stage_frame_seconds", "Seconds per output frame spent in a pipeline stage, per request",
            ["stage"], buckets=_FRAME_BUCKETS, registry=r)
        self.request_seconds = Histogram("lipsync_request_duration_seconds", "Wall time of a Lipsync call",
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.time_to_first_chunk_seconds = Histogram(
            "lipsync_time_to_first_chunk_seconds", "Seconds from the call's start to its first output chunk",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram("lipsync_inference_seconds", "Seconds per generator call",
                                           buckets=_LATENCY_BUCKETS, registry=r)
        self.inference_batch_size = Histogram("lipsync_inference_batch_size", "Frames per generator call",
                                              buckets=_BATCH_BUCKETS, registry=r)

    def set_admission(self, active: int, queued: int) -> None:
        """Admission callback: mirror the slot counts into the gauges."""
        self.streams_active.set(active)
        self.streams_queued.set(queued)

    def observe_inference(self, seconds: float, batch_size: int) -> None:
        """Inference callback: one generator call of `batch_size` frames took `seconds`."""
        self.inference_seconds.observe(seconds)
        self.inference_batch_size.observe(batch_size)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


_default: Metrics | None = None


def default_metrics() -> Metrics:
    """The process-wide metrics, for code that has no server at hand (inference backends)."""
    global _default
    if _default is None:
        _default = Metrics()
    return _default
