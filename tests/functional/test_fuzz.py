"""A seeded slice of the fuzz campaign (benchmarks/fuzz_server.py) against the real server in-process.

Every hostile call ends, within its deadline, with OK and an MP4 that decodes, or with a client-error status and a
message a person can act on; the cases a campaign once failed on are replayed, and the known INTERNAL of issue 19
(speaker data whose box holds no readable face) is a test of its own. The slice is the campaign's first cases for
its seed: LIPSYNC_FUZZ_CASES raises it locally.
"""

from __future__ import annotations

import concurrent.futures
import os

import grpc
import pytest

from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2
from tests import synth
from tests.conftest import MEDIA_DIR
from tests.functional.helpers import FUZZ_STATS, config, requests, run_call, running_server, speaker_msg
from tests.fuzzing import corpus as fuzz_corpus
from tests.fuzzing.cases import REGRESSIONS, make_case
from tests.fuzzing.driver import Outcome, channel_for, run_case

SEED = 19
SLICE = int(os.environ.get("LIPSYNC_FUZZ_CASES", "200"))
# Speaker data cases with the lip-sync processor, besides the regressions: where the face code meets the client.
NEURAL_SPEAKER_CASES = 24
CONCURRENCY = 3
# The in-process server's timers, as `serve` has them where the slice's slow clients need it.
SETTINGS = dict(admission_timeout_s=120.0, input_queue_timeout_s=30.0, keepalive_interval_s=2.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> fuzz_corpus.Corpus:
    return fuzz_corpus.build(tmp_path_factory.mktemp("fuzz"), MEDIA_DIR)


def _run(target: str, corpus: fuzz_corpus.Corpus, cases: list[tuple[int, int]]) -> list[Outcome]:
    def one(seed_index: tuple[int, int]) -> Outcome:
        case = make_case(corpus, *seed_index)
        with channel_for(target) as channel:
            return run_case(channel, case)

    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        outcomes = list(pool.map(one, cases))
    for o in outcomes:
        FUZZ_STATS["count"] = FUZZ_STATS.get("count", 0) + 1
        key = f"{o.case.family}:{o.code.name}"
        FUZZ_STATS[key] = FUZZ_STATS.get(key, 0) + 1
    return outcomes


def _failures(outcomes: list[Outcome]) -> list[str]:
    return [f"#{o.case.index} [{o.case.family}] {o.case.detail[:200]} -> {o.problem}" for o in outcomes if o.problem]


def test_seeded_slice(corpus):
    """The campaign's first cases against the pass-through processor (media, values and protocol misuse)."""
    with running_server(processor="passthrough", **SETTINGS) as srv:
        outcomes = _run(srv.target, corpus, [(SEED, i) for i in range(SLICE)])
        assert _failures(outcomes) == []
        codes = {o.code for o in outcomes}
        assert {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT} <= codes, codes
        # Still serving: a plain call after the slice.
        assert run_call(srv, requests(corpus.videos["faststart"], corpus.wav, config())).video_chunks >= 1


def test_regressions_and_speaker_data_with_the_lip_sync_processor(corpus):
    if not corpus.real_face:
        pytest.skip("the shared talking-head clip is absent: no face for the lip-sync processor to work on")
    speakers = []
    index = 0
    while len(speakers) < NEURAL_SPEAKER_CASES:
        if make_case(corpus, SEED, index).family == "speakers":
            speakers.append((SEED, index))
        index += 1
    with running_server(processor="neural", **SETTINGS) as srv:
        outcomes = _run(srv.target, corpus, [(seed, i) for seed, i, _ in REGRESSIONS] + speakers)
    assert _failures(outcomes) == []


def test_a_speaker_box_without_a_readable_face_is_not_an_internal_error(corpus):
    """Issue 19's INTERNAL: speaker data with one frame whose box holds no readable face (KeyError in core/lips.py)."""
    if not corpus.real_face:
        pytest.skip("the shared talking-head clip is absent")
    frame = lipsync_pb2.SpeakerInfoPerFrame(frame_id=0)
    info = frame.speaker_infos.add()
    # Bottom-left corner of the 256x256 frame: shoulder and background, no face.
    info.speaker_bbox.x, info.speaker_bbox.y, info.speaker_bbox.width, info.speaker_bbox.height = 0, 216, 40, 40
    info.speaker_id, info.is_speaking = 1, True
    with running_server(processor="neural", **SETTINGS) as srv:
        result = run_call(srv, [config(is_speaker_info_provided=True), speaker_msg([frame]),
                                *requests(corpus.videos["faststart"], corpus.wav)], timeout=120)
    assert synth.probe(result.video)["frame_count"] == corpus.frames
