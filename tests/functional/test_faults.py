"""Faults on purpose: SIGTERM while calls run and wait, clients that vanish mid-upload and mid-download, the spool's
disk full. Each ends the way docs/protocol.md promises and leaves nothing behind (the scenarios: tests/faults.py;
their figures: benchmarks/bench_faults.py; Triton killed and restarted: tests/functional/test_triton_faults.py)."""

from __future__ import annotations

import pytest

from tests import faults
from tests.functional.helpers import config, requests, run_call, running_server, wait_until


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return faults.clips(tmp_path_factory.mktemp("faults"))


def test_sigterm_under_load_finishes_running_calls_refuses_the_rest_and_exits_zero(clip):
    """4x the concurrency limit: the 2 running calls finish with their whole output, the 6 queued ones and a new
    one get UNAVAILABLE, the process exits 0."""
    got = faults.sigterm_under_load(clip, slots=2, clients=8)
    assert got["queued_before"]
    assert got["exit_status"] == 0 and got["exit_s"] < 60
    assert sorted(got["outcomes"]) == [("OK", "", 50)] * 2 + [("UNAVAILABLE", "server is shutting down", 0)] * 6
    assert got["late"][0] == "UNAVAILABLE"


@pytest.mark.parametrize("phase", ["upload", "download"])
def test_a_client_killed_mid_call_frees_its_slot_at_once(clip, tmp_path, phase):
    with running_server(keepalive_interval_s=0.5, output_stall_timeout_s=60) as srv:
        got = faults.client_killed(srv, clip, phase, tmp_path)
        assert got["held_a_slot"]
        # Measured 0.1-0.3 s (benchmarks/bench_faults.py); the margin is for a loaded CI machine.
        assert got["freed_s"] < 2.0, f"the slot came back after {got['freed_s']} s"
        # The call's last line follows its slot's release.
        assert wait_until(lambda: srv.metrics.registry.get_sample_value(
            "lipsync_streams_total", {"code": "CANCELLED"}) == 1, timeout=5)
        # The server goes on serving.
        assert run_call(srv, requests(clip["video"], clip["audio"], config())).video_chunks >= 1


@pytest.mark.skipif(not faults.can_mount_tmpfs(), reason="no mount namespace here (unshare -rm) for a small tmpfs")
def test_the_spool_disk_full_is_resource_exhausted_and_leaves_nothing(clip, tmp_path):
    got = faults.spool_disk_full(clip, tmp_path / "spool", size_kib=64)
    assert got["upload_bytes"] > 64 * 1024 > len(clip["transactional"])
    assert got["big"] == ("RESOURCE_EXHAUSTED", "video: spooling the upload failed: No space left on device")
    assert got["left_after_big"] == 0
    assert got["small"] == ("OK", 50) and got["left_after_small"] == 0
    assert got["left_outside"] == 0
