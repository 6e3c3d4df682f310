"""The one settings model: every knob of the service, its environment variable and default."""

from __future__ import annotations

import os
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_model_repository() -> Path:
    """The model repository that ships with the service, default model included.

    An installed wheel carries it inside the package (the build copies the checkout's triton_repo/ there);
    an editable install or a source tree uses triton_repo/ of the checkout itself, the one committed copy.
    """
    package = Path(__file__).resolve().parent
    packaged = package / "model_repository"
    return packaged if packaged.is_dir() else package.parent / "triton_repo"


DEFAULT_MODEL_REPOSITORY = default_model_repository()


class SslMode(str, Enum):
    DISABLED = "disabled"
    TLS = "tls"
    MTLS = "mtls"


class BackendKind(str, Enum):
    ONNXRUNTIME = "onnxruntime"
    TRITON = "triton"
    TENSORRT = "tensorrt"


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Service settings, read from the environment (names as in the LipSync NIM where it has one)."""

    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    # Network surface.
    host: str = Field("0.0.0.0", validation_alias=_env("NIM_HOST", "host"))
    grpc_port: int = Field(8001, validation_alias=_env("NIM_GRPC_API_PORT", "grpc_port"))
    http_port: int = Field(8000, validation_alias=_env("NIM_HTTP_API_PORT", "http_port"))
    ssl_mode: SslMode = Field(SslMode.DISABLED, validation_alias=_env("NIM_SSL_MODE", "ssl_mode"))
    ssl_cert_path: Path | None = Field(None, validation_alias=_env("NIM_SSL_CERT_PATH", "ssl_cert_path"))
    ssl_key_path: Path | None = Field(None, validation_alias=_env("NIM_SSL_KEY_PATH", "ssl_key_path"))
    ssl_ca_path: Path | None = Field(None, validation_alias=_env("NIM_SSL_CA_PATH", "ssl_ca_path"))

    # Admission and timeouts.
    max_concurrency_per_gpu: int = Field(
        2, ge=1, validation_alias=_env("NV_AI4M_MAX_CONCURRENCY_PER_GPU", "max_concurrency_per_gpu")
    )
    device_count: int = Field(1, ge=1, validation_alias=_env("NV_AI4M_DEVICE_COUNT", "device_count"))
    max_queued_streams: int = Field(
        8, ge=0, validation_alias=_env("NV_AI4M_MAX_QUEUED_STREAMS", "max_queued_streams")
    )
    admission_timeout_s: float = Field(
        30.0, gt=0, validation_alias=_env("NV_AI4M_ADMISSION_TIMEOUT_S", "admission_timeout_s")
    )
    input_queue_timeout_s: float = Field(
        30.0, gt=0, validation_alias=_env("NV_AI4M_LS_INPUT_QUEUE_TIMEOUT_S", "input_queue_timeout_s")
    )
    # A client that stops reading the responses (e.g. half-closed, then idle on a live connection) would
    # hold its slot forever: a response write blocked this long ends the call.
    output_stall_timeout_s: float = Field(
        60.0, gt=0, validation_alias=_env("NV_AI4M_OUTPUT_STALL_TIMEOUT_S", "output_stall_timeout_s")
    )
    keepalive_interval_s: float = Field(
        2.0, gt=0, validation_alias=_env("NV_AI4M_KEEPALIVE_INTERVAL_S", "keepalive_interval_s")
    )
    drain_timeout_s: float = Field(
        60.0, ge=0, validation_alias=_env("NV_AI4M_DRAIN_TIMEOUT_S", "drain_timeout_s")
    )
    session_id_metadata_key: str = Field(
        "client-session-id",
        validation_alias=_env("NV_AI4M_SESSION_ID_METADATA_KEY", "session_id_metadata_key"),
    )

    # Limits on what a client may send.
    max_message_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, validation_alias=_env("NV_AI4M_MAX_MESSAGE_BYTES", "max_message_bytes")
    )
    max_spool_bytes: int = Field(
        8 * 1024**3, ge=1, validation_alias=_env("NV_AI4M_MAX_SPOOL_BYTES", "max_spool_bytes")
    )
    max_duration_s: float = Field(
        3600.0, gt=0, validation_alias=_env("NV_AI4M_MAX_DURATION_S", "max_duration_s")
    )
    # 4K: the longer side at most 4096 and at most 4096x2160 pixels.
    max_frame_side: int = Field(4096, ge=16, validation_alias=_env("NV_AI4M_MAX_FRAME_SIDE", "max_frame_side"))
    max_frame_pixels: int = Field(
        4096 * 2160, ge=256, validation_alias=_env("NV_AI4M_MAX_FRAME_PIXELS", "max_frame_pixels")
    )
    # Memory one call may hold on its client's behalf: upload buffered ahead of the job (all inputs), speaker
    # data, decoded audio, output not yet read (server/budget.py). More is refused with RESOURCE_EXHAUSTED.
    max_stream_memory_bytes: int = Field(
        256 * 1024 * 1024, ge=32 * 1024 * 1024,
        validation_alias=_env("NV_AI4M_MAX_STREAM_MEMORY_BYTES", "max_stream_memory_bytes"),
    )
    # Bytes of upload buffered in memory per input before the reader applies backpressure.
    stream_buffer_bytes: int = Field(
        4 * 1024 * 1024, ge=65536, validation_alias=_env("NV_AI4M_STREAM_BUFFER_BYTES", "stream_buffer_bytes")
    )
    spool_dir: Path | None = Field(None, validation_alias=_env("NV_AI4M_SPOOL_DIR", "spool_dir"))
    output_chunk_bytes: int = Field(
        256 * 1024, ge=1024, validation_alias=_env("NV_AI4M_OUTPUT_CHUNK_BYTES", "output_chunk_bytes")
    )

    # Seconds between returns of the C heap's free memory to the system while calls keep running (it is always
    # returned when the server goes idle); 0 turns it off. See server/heap.py.
    heap_trim_interval_s: float = Field(
        10.0, ge=0, validation_alias=_env("NV_AI4M_HEAP_TRIM_INTERVAL_S", "heap_trim_interval_s")
    )
    # glibc malloc arenas (0: glibc's default, 8 per core): fewer arenas strand less freed memory (server/heap.py).
    malloc_arena_max: int = Field(2, ge=0, validation_alias=_env("NV_AI4M_MALLOC_ARENA_MAX", "malloc_arena_max"))
    # Where `serve` has Python allocate its objects: "malloc" (the C library's, trimmed with the rest of the heap) or
    # "pymalloc" (Python's default, whose 1 MiB arenas a few surviving objects keep; server/heap.py).
    python_allocator: Literal["malloc", "pymalloc"] = Field(
        "malloc", validation_alias=_env("NV_AI4M_PYTHON_ALLOCATOR", "python_allocator")
    )
    # The interpreter's own allocator variable, as this process was started with it (read, never set, here).
    pythonmalloc: str = Field("", validation_alias=_env("PYTHONMALLOC", "pythonmalloc"))

    # Behaviour.
    debug_mode: bool = Field(False, validation_alias=_env("NV_AI4M_LS_DEBUG_MODE", "debug_mode"))
    # Without client speaker data: re-draw the face that speaks (active speaker detection) or the largest face.
    speaker_choice: Literal["active", "largest"] = Field(
        "active", validation_alias=_env("NV_AI4M_LS_SPEAKER_CHOICE", "speaker_choice")
    )
    # Something in front of the mouth (a hand, a microphone) is found by a small model and kept; off: every mouth
    # is treated as uncovered (docs/behaviour.md#covered-mouths).
    occlusion_check: bool = Field(True, validation_alias=_env("NV_AI4M_LS_OCCLUSION_CHECK", "occlusion_check"))
    processor: str = Field("neural", validation_alias=_env("NV_AI4M_LS_PROCESSOR", "processor"))

    # Inference.
    backend: BackendKind = Field(
        BackendKind.ONNXRUNTIME, validation_alias=_env("NV_AI4M_LS_BACKEND", "backend")
    )
    model_repository: Path = Field(
        DEFAULT_MODEL_REPOSITORY, validation_alias=_env("NV_AI4M_LS_MODEL_REPOSITORY", "model_repository")
    )
    model_name: str = Field("lipsync_generator", validation_alias=_env("NV_AI4M_LS_MODEL_NAME", "model_name"))
    model_version: str = Field("", validation_alias=_env("NV_AI4M_LS_MODEL_VERSION", "model_version"))
    # As in NVIDIA's NIMs: comma-separated key=value pairs, e.g. "language=de"; picks, at start-up, the model whose
    # config.pbtxt tags (parameters tag.<key>) match them all. Empty: model_name is served.
    tags_selector: str = Field("", validation_alias=_env("NIM_TAGS_SELECTOR", "tags_selector"))
    triton_url: str = Field("localhost:8101", validation_alias=_env("NV_AI4M_TRITON_URL", "triton_url"))
    triton_timeout_s: float = Field(30.0, gt=0, validation_alias=_env("NV_AI4M_TRITON_TIMEOUT_S", "triton_timeout_s"))
    # auto: tensors through POSIX shared memory when Triton is on this host (loopback or unix target).
    triton_shm: Literal["auto", "on", "off"] = Field("auto", validation_alias=_env("NV_AI4M_TRITON_SHM", "triton_shm"))
    max_batch_size: int = Field(16, ge=1, validation_alias=_env("NV_AI4M_LS_MAX_BATCH", "max_batch_size"))
    ort_intra_op_threads: int = Field(
        0, ge=0, validation_alias=_env("NV_AI4M_ORT_THREADS", "ort_intra_op_threads")
    )
    engine_cache_dir: Path = Field(
        Path.home() / ".cache" / "lipsync-service" / "engines",
        validation_alias=_env("NV_AI4M_ENGINE_CACHE_DIR", "engine_cache_dir"),
    )

    # Logging.
    log_level: str = Field("INFO", validation_alias=_env("NIM_LOG_LEVEL", "log_level"))

    @field_validator("ssl_mode", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @property
    def max_concurrent_streams(self) -> int:
        """Streams processed at once across all devices."""
        return self.max_concurrency_per_gpu * self.device_count

    @property
    def ort_threads(self) -> int:
        """Intra-op threads for ONNX Runtime: the setting, else the CPU count."""
        return self.ort_intra_op_threads or (os.cpu_count() or 1)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()
