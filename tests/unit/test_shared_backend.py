"""One generator backend per process: built once at warm-up, shared by every stream's processor, closed at shutdown."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from lipsync_service.core import factory as processors
from lipsync_service.core.neural import NeuralProcessor
from lipsync_service.errors import InferenceUnavailable
from lipsync_service.inference.base import LIP_SHAPE_SIZE, GeneratorBackend, ModelSpec, OutputContract
from lipsync_service.inference.shared import SharedBackend
from lipsync_service.settings import Settings
from tests.core.fakes import EchoBackend


class CountingBackend(EchoBackend):
    """EchoBackend that records closes, per-thread releases, and can be switched off."""

    def __init__(self) -> None:
        super().__init__(face_size=96, max_batch_size=4)
        self.closed = 0
        self.released: list[str] = []
        self.down = False

    def infer(self, face: np.ndarray, mel: np.ndarray) -> np.ndarray:
        if self.down:
            raise InferenceUnavailable("Triton at 127.0.0.1:1 is unreachable or not answering")
        return super().infer(face, mel)

    def release_thread(self) -> None:
        self.released.append(threading.current_thread().name)

    def close(self) -> None:
        self.closed += 1


def _batch(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((n, 6, 96, 96), np.float32), np.zeros((n, 1, 80, 16), np.float32)


@pytest.fixture
def factory_parts():
    built: list[CountingBackend] = []
    observed: list[tuple[float, int]] = []

    def make_backend(settings: Settings) -> CountingBackend:
        built.append(CountingBackend())
        return built[-1]

    factory = processors.ProcessorFactory(Settings(processor="neural"), backend_builder=make_backend,
                                          observe=lambda s, b: observed.append((s, b)))
    yield factory, built, observed
    factory.close()


def test_one_backend_for_all_streams(factory_parts):
    factory, built, _ = factory_parts
    factory.warm_up()
    streams = [factory.create() for _ in range(3)]
    assert len(built) == 1, "the backend is built once, at warm-up"
    assert all(isinstance(p, NeuralProcessor) for p in streams)
    assert len({id(p) for p in streams}) == 3, "each stream has a processor (and tracking state) of its own"
    assert factory.model_info == streams[0].model_info
    for p in streams:
        p.close()
    assert built[0].closed == 0, "a stream ending must not close the shared backend"
    assert len(built[0].released) >= 3  # ... but releases its thread's share
    factory.close()
    assert built[0].closed == 1


def test_streams_call_the_shared_backend_concurrently_and_metrics_see_each_call(factory_parts):
    factory, built, observed = factory_parts
    factory.warm_up()
    handles = [factory._backend.borrow() for _ in range(4)]
    errors: list[BaseException] = []

    def call(handle) -> None:
        try:
            for n in (1, 3, 4):
                assert handle.infer(*_batch(n)).shape == (n, 3, 96, 96)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(h,)) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert sorted(b for _, b in observed) == sorted([1, 3, 4] * 4)
    assert all(s >= 0 for s, _ in observed)


def test_unreachable_backend_is_reported_and_probed(factory_parts):
    factory, built, observed = factory_parts
    factory.warm_up()
    reports: list[str] = []
    factory.on_backend_unavailable = lambda exc: reports.append(str(exc))
    handle = factory._backend.borrow()
    built[0].down = True
    with pytest.raises(InferenceUnavailable):
        handle.infer(*_batch(2))
    assert reports == ["Triton at 127.0.0.1:1 is unreachable or not answering"]
    assert observed == []
    with pytest.raises(InferenceUnavailable):
        factory.probe()
    built[0].down = False
    factory.probe()  # answers again


def test_passthrough_needs_no_backend():
    factory = processors.ProcessorFactory(Settings(processor="passthrough"),
                                          backend_builder=lambda s: pytest.fail("no backend for pass-through"))
    factory.warm_up()
    factory.probe()
    assert factory.create().model_info == "passthrough"
    factory.close()


class LipShapeBackend(GeneratorBackend):
    """A LIP_SHAPE stand-in: mel [B, 1, 80, 16] -> [B, 2]; records what each call received."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, tuple[int, ...]]] = []

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(name="shape", face_size=0, max_batch_size=4, contract=OutputContract.LIP_SHAPE)

    def infer(self, face, mel: np.ndarray) -> np.ndarray:
        self.calls.append((face, mel.shape))
        return np.zeros((len(mel), LIP_SHAPE_SIZE), np.float32)


def test_probe_and_calls_follow_the_models_contract():
    observed: list[tuple[float, int]] = []
    inner = LipShapeBackend()
    shared = SharedBackend(inner, observe=lambda s, b: observed.append((s, b)))
    shared.probe()
    assert inner.calls == [(None, (1, 1, 80, 16))], "a lip_shape probe sends a blank mel and no face"
    handle = shared.borrow()
    assert handle.spec.contract is OutputContract.LIP_SHAPE
    assert handle.infer(None, np.zeros((3, 1, 80, 16), np.float32)).shape == (3, LIP_SHAPE_SIZE)
    assert [b for _, b in observed] == [3]  # the batch size comes from the mel when there is no face
    rgb = CountingBackend()
    SharedBackend(rgb).probe()
    assert rgb.batches == [1]  # EchoBackend checked a [1, 6, 96, 96] face beside the mel
