"""Triton backend: the generator served by a Triton Inference Server, called over gRPC.

The pipeline calls `infer` from worker threads (one per stream), so this uses tritonclient's synchronous
gRPC client, one per thread: concurrent streams send concurrent requests, which Triton's dynamic batcher
merges into one model execution.

When Triton runs on the same host, each thread's client also owns a pair of POSIX shared-memory regions
(inputs, output; sized for the tensors of the model's contract) registered with the server, so tensors skip
protobuf serialisation and the gRPC copy; if registration fails (e.g. the server is in another container) that
thread falls back to tensors in the message.

The model's contract (RGB_FACE or LIP_SHAPE) is read from its config at start-up (tensor names, and the
`lipsync_contract` parameter when present) and checked against its metadata.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading

import numpy as np

from lipsync_service.errors import InferenceError, InferenceUnavailable, without_paths
from lipsync_service.inference.base import (
    GeneratorBackend,
    ModelSpec,
    check_request,
    model_feeds,
    run_in_batches,
    sizes_label,
    sizes_of,
)

# gRPC status codes (as tritonclient spells them) that mean "the server is not there or not ready".
_UNAVAILABLE = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED"}

_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}
_SHM_MODES = ("auto", "on", "off")
_region_ids = itertools.count()
log = logging.getLogger(__name__)


def shm_wanted(mode: str, url: str) -> bool:
    """Whether to try system shared memory for a server at `url`.

    Args:
        mode: "on", "off", or "auto" (on for loopback and unix-socket targets).
        url: the gRPC target.

    Returns:
        True when the client should register shared-memory regions.

    Raises:
        InferenceError: an unknown mode.
    """
    if mode not in _SHM_MODES:
        raise InferenceError(f"Triton shared-memory mode must be one of {', '.join(_SHM_MODES)}, not {mode!r}")
    if mode != "auto":
        return mode == "on"
    if url.startswith("unix:"):
        return True
    host = url.rsplit(":", 1)[0] if url.count(":") == 1 or url.startswith("[") else url
    return host in _LOCAL_HOSTS


class _Regions:
    """One thread's registered input and output shared-memory regions, sized for the largest batch.

    The input region holds the contract's inputs one after the other, each at its own offset.
    """

    def __init__(self, client, input_bytes: dict[str, int], out_bytes: int, timeout_s: float) -> None:
        import tritonclient.utils.shared_memory as shm

        tag = f"lipsync_{os.getpid()}_{next(_region_ids)}"
        self.in_name, self.out_name = f"{tag}_in", f"{tag}_out"
        self.offsets: dict[str, int] = {}
        in_bytes = 0
        for name, size in input_bytes.items():
            self.offsets[name] = in_bytes
            in_bytes += size
        self._client = client
        self._in = shm.create_shared_memory_region(self.in_name, f"/{self.in_name}", in_bytes)
        self._out = None
        try:
            self._out = shm.create_shared_memory_region(self.out_name, f"/{self.out_name}", out_bytes)
            client.register_system_shared_memory(self.in_name, f"/{self.in_name}", in_bytes, client_timeout=timeout_s)
            client.register_system_shared_memory(
                self.out_name, f"/{self.out_name}", out_bytes, client_timeout=timeout_s
            )
        except Exception:
            self.close()
            raise

    def write(self, feeds: dict[str, np.ndarray]) -> None:
        import tritonclient.utils.shared_memory as shm

        for name, array in feeds.items():
            shm.set_shared_memory_region(self._in, [array], offset=self.offsets[name])

    def read(self, shape: tuple[int, ...]) -> np.ndarray:
        import tritonclient.utils.shared_memory as shm

        # A copy: the region is overwritten by this thread's next call.
        return np.array(shm.get_contents_as_numpy(self._out, np.float32, list(shape)))

    def close(self) -> None:
        """Unregister (best effort: the server may be gone) and unlink both regions."""
        import tritonclient.utils.shared_memory as shm

        for name in (self.in_name, self.out_name):
            try:
                self._client.unregister_system_shared_memory(name, client_timeout=2.0)
            except Exception:  # the server is down or restarted; its registrations are gone with it
                pass
        for handle in (self._in, self._out):
            if handle is not None:
                shm.destroy_shared_memory_region(handle)
        self._in = self._out = None


def _translate(exc: Exception, url: str, model: str, what: str) -> Exception:
    """Our exception for a tritonclient error.

    A client sees it, so Triton's own text is quoted without the file-system paths it may name (its model
    repository); the full text goes to the log.
    """
    from tritonclient.utils import InferenceServerException

    text = (exc.message() if isinstance(exc, InferenceServerException) else str(exc)) or ""
    public = without_paths(text)
    if public != text:
        log.warning("Triton %s for model %r failed: %s", what, model, text)
    if isinstance(exc, InferenceServerException):
        status = exc.status() or ""
        if status in _UNAVAILABLE:
            return InferenceUnavailable(
                f"Triton at {without_paths(url)} is unreachable or not answering ({what}, model {model!r}): {public}"
            )
        return InferenceError(f"Triton {what} for model {model!r} failed: {status} {public}")
    return InferenceError(f"Triton {what} for model {model!r} failed: {public}")


class TritonBackend(GeneratorBackend):
    """Calls the generator model on a Triton server; checks liveness, readiness and the tensor contract first."""

    def __init__(
        self,
        url: str,
        model_name: str,
        model_version: str = "",
        timeout_s: float = 30.0,
        max_batch_size: int = 16,
        shm: str = "auto",
    ) -> None:
        """Connect and check the model.

        Args:
            url: host:port of Triton's gRPC endpoint.
            model_name: the generator model.
            model_version: a version, or "" for Triton's choice (latest by default).
            timeout_s: per-call deadline.
            max_batch_size: client-side batch limit; also capped by the model's max_batch_size.
            shm: system shared memory for tensors: "on", "off", or "auto" (on for a loopback or unix target).

        Raises:
            InferenceUnavailable: server down, model not ready, or its metadata breaks the contract.
            InferenceError: an unknown `shm` mode.
        """
        self._use_shm = shm_wanted(shm, url)
        self._url = url
        self._model = model_name
        self._version = model_version
        self._timeout_s = timeout_s
        self._local = threading.local()
        # Bumped after a connection failure; each thread opens a fresh client when its copy is stale.
        self._generation = 0
        self._lock = threading.Lock()
        self._clients: list = []  # every client opened, so close() reaches those of other threads
        self._regions: dict = {}  # client -> its thread's _Regions, released with the client
        self._spec = self._check(max_batch_size)

    def _client(self):  # -> tritonclient.grpc.InferenceServerClient
        import tritonclient.grpc as grpcclient

        local = self._local
        if getattr(local, "client", None) is None or local.generation != self._generation:
            if getattr(local, "client", None) is not None:
                self._forget(local.client)
            local.client = grpcclient.InferenceServerClient(self._url)
            local.generation = self._generation
            with self._lock:
                self._clients.append(local.client)
        return local.client

    def _forget(self, client) -> None:
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)
            regions = self._regions.pop(client, None)
        if regions is not None:
            regions.close()
        client.close()

    def _regions_for(self, client):  # -> _Regions | None
        """The calling thread's shared-memory regions on `client`, registered on first use; None for plain gRPC."""
        if not self._use_shm:
            return None
        with self._lock:
            regions = self._regions.get(client)
        if regions is not None:
            return regions
        spec = self._spec
        dims = spec.contract.dims(spec.face_size)
        input_bytes = {name: spec.max_batch_size * 4 * int(np.prod(dims[name])) for name in spec.contract.inputs}
        out_bytes = spec.max_batch_size * 4 * int(np.prod(spec.output_dims))
        try:
            regions = _Regions(client, input_bytes, out_bytes, self._timeout_s)
        except Exception as exc:
            error = _translate(exc, self._url, self._model, "shared-memory registration")
            if isinstance(error, InferenceUnavailable):
                raise error from exc  # the server is down: the call fails as it would without shared memory
            # e.g. the server runs in another container and cannot open our regions: plain tensors from now on.
            log.warning("Triton shared memory unusable, sending tensors over gRPC: %s", error)
            self._use_shm = False
            return None
        with self._lock:
            self._regions[client] = regions
        return regions

    def release_thread(self) -> None:
        """Close the calling thread's client; a stream's worker thread calls this when its stream ends, so a
        backend shared by many short-lived threads does not keep one open channel per finished thread."""
        client = getattr(self._local, "client", None)
        if client is not None:
            self._local.client = None
            self._forget(client)

    def _reset(self) -> None:
        with self._lock:
            self._generation += 1

    def _check(self, max_batch_size: int) -> ModelSpec:
        client = self._client()
        try:
            if not client.is_server_live(client_timeout=self._timeout_s):
                raise InferenceUnavailable(f"Triton at {self._url} is not live")
            if not client.is_model_ready(self._model, self._version, client_timeout=self._timeout_s):
                raise InferenceUnavailable(
                    f"model {self._model!r} is not ready on Triton at {self._url} (is it in the model repository?)"
                )
            meta = client.get_model_metadata(self._model, self._version, client_timeout=self._timeout_s)
            config = client.get_model_config(self._model, self._version, client_timeout=self._timeout_s).config
        except InferenceUnavailable:
            self._reset()
            raise
        except Exception as exc:
            self._reset()
            raise InferenceUnavailable(str(_translate(exc, self._url, self._model, "start-up check"))) from exc
        from lipsync_service.inference.repository import config_contract

        try:
            contract = config_contract(config)
        except InferenceError as exc:
            raise InferenceError(f"model {self._model!r} on Triton at {self._url}: {exc}") from exc
        tensors = {t.name: (t.datatype, list(t.shape)) for t in [*meta.inputs, *meta.outputs]}
        used = {name: tensors.get(name, ("", [])) for name in contract.dims(0)}
        sizes = sizes_of(contract, {name: shape[1:] for name, (_, shape) in used.items()})
        if sizes is None or any(dtype != "FP32" or shape[:1] != [-1] for dtype, shape in used.values()):
            raise InferenceUnavailable(
                f"model {self._model!r} on Triton at {self._url} does not match the {contract.value} contract: "
                f"inputs {[t.name for t in meta.inputs]}, outputs {[t.name for t in meta.outputs]}, "
                f"tensors {used}; expected FP32 {contract.signature()} with a dynamic batch axis B"
            )
        limit = max_batch_size
        if config.max_batch_size > 0:
            limit = min(limit, config.max_batch_size)
        description = config.parameters["description"].string_value if "description" in config.parameters else ""
        shape = sizes_label(contract, sizes)
        return ModelSpec(
            name=self._model,
            face_size=sizes.face_size,
            shape_columns=sizes.shape_columns,
            max_batch_size=limit,
            description=(
                f"{self._model}: {description or 'generator'} "
                f"(triton {config.platform or config.backend}, {shape})"
            ),
            contract=contract,
        )

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def infer(self, face: np.ndarray | None, mel: np.ndarray) -> np.ndarray:
        check_request(self._spec, face, mel)
        return run_in_batches(face, mel, self._spec.max_batch_size, self._infer_one)

    def _infer_one(self, face: np.ndarray | None, mel: np.ndarray) -> np.ndarray:
        import tritonclient.grpc as grpcclient

        feeds = model_feeds(face, mel)
        contract = self._spec.contract
        out_name = contract.output
        out_shape = (mel.shape[0], *self._spec.output_dims)
        inputs = [grpcclient.InferInput(name, list(array.shape), "FP32") for name, array in feeds.items()]
        output = grpcclient.InferRequestedOutput(out_name)
        try:
            client = self._client()
            regions = self._regions_for(client)
            if regions is not None:
                regions.write(feeds)
                for tensor, (name, array) in zip(inputs, feeds.items()):
                    tensor.set_shared_memory(regions.in_name, array.nbytes, offset=regions.offsets[name])
                output.set_shared_memory(regions.out_name, 4 * int(np.prod(out_shape)))
            else:
                for tensor, array in zip(inputs, feeds.values()):
                    tensor.set_data_from_numpy(array)
            result = client.infer(
                self._model,
                inputs,
                model_version=self._version,
                outputs=[output],
                client_timeout=self._timeout_s,
            )
        except InferenceUnavailable:  # shared-memory registration found the server gone
            self._reset()
            raise
        except Exception as exc:
            error = _translate(exc, self._url, self._model, "inference")
            if isinstance(error, InferenceUnavailable):
                self._reset()
            raise error from exc
        if regions is not None:
            if result.get_output(out_name) is None:
                raise InferenceError(f"Triton model {self._model!r} returned no {out_name!r} tensor")
            return regions.read(out_shape)
        out = result.as_numpy(out_name)
        if out is None or out.shape != out_shape:
            raise InferenceError(
                f"Triton model {self._model!r} returned {None if out is None else out.shape} "
                f"for a batch of {mel.shape[0]} (expected {out_shape})"
            )
        return out

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
            regions, self._regions = list(self._regions.values()), {}
            self._generation += 1
        for region in regions:
            region.close()
        for client in clients:
            client.close()
