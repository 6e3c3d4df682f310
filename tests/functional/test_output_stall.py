"""A client that sends everything, half-closes and then never reads loses its call after the output stall limit."""

from __future__ import annotations

import json
import logging
import threading
import time

import grpc
import pytest

from tests import synth
from tests.functional.helpers import config, open_fds, requests, run_call, running_server, wait_until

LIMIT_S = 1.0
# The output must outgrow what gRPC buffers for a client that does not read: one 64 KiB HTTP/2 window (the
# client below turns off window growth) plus the server's 64 KiB output buffer. Key frames at a high bitrate
# make a 2 s clip about half a megabyte.
ENCODING = {"lossy": {"bitrate_mbps": 40, "idr_interval": 1}}


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("stall")
    return {"video": synth.make_video(d / "v.mp4", seconds=2.0, size=(160, 120)).read_bytes(),
            "audio": synth.make_wav(d / "a.wav", seconds=2.0).read_bytes()}


def test_client_that_stops_reading_is_cut_off_and_everything_is_freed(clip, caplog):
    caplog.set_level(logging.INFO, logger="lipsync_service.server.session")
    with running_server(output_stall_timeout_s=LIMIT_S, stream_buffer_bytes=65536, keepalive_interval_s=0.3) as srv:
        full = run_call(srv, requests(clip["video"], clip["audio"], config(output_video_encoding=ENCODING)))
        assert len(full.video) > 4 * 65536, "the clip is too small to fill the transport's buffers"
        time.sleep(0.2)
        threads, fds = threading.active_count(), open_fds()

        # No window growth: what the client's transport accepts without the application reading stays small.
        with srv.channel(**{"grpc.http2.bdp_probe": 0, "grpc.http2.lookahead_bytes": 65536}) as channel:
            call = srv.stub(channel).Lipsync(requests(clip["video"], clip["audio"],
                                                      config(output_video_encoding=ENCODING)), timeout=60,
                                                      metadata=[("client-session-id", "stalled-1")])
            assert wait_until(lambda: srv.server.admission.active == 1, timeout=10)
            t0 = time.monotonic()
            # The client reads nothing: the slot is taken back once a write has been blocked for the limit.
            assert wait_until(lambda: srv.server.admission.active == 0, timeout=LIMIT_S + 5)
            assert time.monotonic() - t0 < LIMIT_S + 2.5
            # The slot is given back first; the call is counted as it finishes, a moment later (CI at 42f037f
            # read the counter in between once, on a loaded machine).
            assert wait_until(lambda: srv.metrics.registry.get_sample_value(
                "lipsync_streams_total", {"code": "DEADLINE_EXCEEDED"}) == 1, timeout=2)
            # Reading again, the client finds the call ended at once (not at its own 60 s deadline), with why.
            with pytest.raises(grpc.RpcError) as info:
                for _ in call:
                    pass
            assert time.monotonic() - t0 < LIMIT_S + 3
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert info.value.details().startswith(f"the client has not read the responses for {LIMIT_S:g} s")
            assert "NV_AI4M_OUTPUT_STALL_TIMEOUT_S" in info.value.details()
        # One structured line ends the request: ids, durations, outcome and why.
        finished = [json.loads(r.getMessage()) for r in caplog.records if '"request_finished"' in r.getMessage()]
        stalled = [f for f in finished if f["client_session_id"] == "stalled-1"]
        assert len(stalled) == 1 and stalled[0]["outcome"] == "DEADLINE_EXCEEDED"
        assert stalled[0]["message"].startswith("the client has not read the responses")
        assert len(stalled[0]["request_id"]) == 32 and stalled[0]["duration_s"] >= LIMIT_S
        assert stalled[0]["queued_s"] is not None and stalled[0]["queued_s"] < 1
        assert wait_until(lambda: threading.active_count() <= threads, timeout=5), threading.enumerate()
        assert wait_until(lambda: open_fds() <= fds, timeout=5)

        # A client that reads gets its whole output, however long the call takes.
        again = run_call(srv, requests(clip["video"], clip["audio"], config(output_video_encoding=ENCODING)))
        assert len(again.video) == len(full.video)


def test_output_stall_limit_is_a_setting(monkeypatch):
    from lipsync_service.settings import Settings

    assert Settings().output_stall_timeout_s == 60.0
    monkeypatch.setenv("NV_AI4M_OUTPUT_STALL_TIMEOUT_S", "5")
    assert Settings().output_stall_timeout_s == 5.0
