"""A client's error never names a server file-system path; the server log keeps the detail.

Walks the failures whose cause is on the server's disk through the real server: the model missing from the
repository, a model file that does not load, a spool directory that cannot be written.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import grpc
import pytest

from tests import synth
from tests.functional.helpers import config, expect_error, requests, running_server

# An absolute path: "/" after no word character, ":", "/" or "." (so "1/25", "I/O", URLs do not count), then a
# path component.
ABSOLUTE_PATH = re.compile(r"(?<![\w:/.])/[\w.-]")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("paths")
    return {"video": synth.make_video(d / "v.mp4", seconds=1.0, layout="transactional").read_bytes(),
            "audio": synth.make_wav(d / "a.wav", seconds=1.0).read_bytes()}


def assert_no_path(details: str, directory: Path) -> None:
    assert str(directory) not in details, details
    assert not any(f"/{part}" in details for part in directory.parts[1:]), details
    assert ABSOLUTE_PATH.search(details) is None, details


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


def finished_line(caplog: pytest.LogCaptureFixture) -> dict:
    lines = [r.getMessage() for r in caplog.records if '"event": "request_finished"' in r.getMessage()]
    assert lines, "no request_finished line"
    return json.loads(lines[-1])


@pytest.mark.parametrize("case", ["model missing", "model unloadable"])
def test_model_errors_name_the_model_not_the_repository(tmp_path, media, caplog, case):
    caplog.set_level(logging.INFO)
    repository = tmp_path / "model_repository"
    repository.mkdir()
    if case == "model unloadable":
        (repository / "lipsync_generator" / "1").mkdir(parents=True)
        (repository / "lipsync_generator" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    with running_server(processor="neural", backend="onnxruntime", model_repository=repository,
                        model_name="lipsync_generator") as srv:
        details = expect_error(srv, requests(media["video"], media["audio"], config()), grpc.StatusCode.UNAVAILABLE)
    assert "model 'lipsync_generator'" in details
    assert_no_path(details, repository)
    if case == "model missing":
        assert "not found in the model repository" in details and "NV_AI4M_LS_MODEL_REPOSITORY" in details
    else:
        assert "cannot load ONNX model" in details
    assert str(repository) in logged(caplog)  # the operator still learns where
    assert_no_path(finished_line(caplog)["message"], repository)


def test_an_unwritable_spool_directory_is_not_named(tmp_path, media, caplog):
    caplog.set_level(logging.INFO)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the spool directory's parent should be")
    spool_dir = blocker / "spool"
    with running_server(spool_dir=spool_dir) as srv:
        details = expect_error(srv, requests(media["video"], media["audio"], config()),
                               grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert details.startswith("cannot create a spool file for the upload in <server path>")
    assert_no_path(details, spool_dir)
    assert str(spool_dir) in logged(caplog)
    assert_no_path(finished_line(caplog)["message"], spool_dir)
