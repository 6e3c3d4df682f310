"""Error texts a client sees carry no server file-system path; the log and `detail` keep the full text."""

from __future__ import annotations

import logging

import pytest

from lipsync_service.errors import (
    SERVER_PATH,
    InferenceError,
    InferenceUnavailable,
    InternalError,
    InvalidInput,
    ResourceExhausted,
    without_paths,
)


@pytest.mark.parametrize(("text", "public"), [
    ("cannot create a spool file in /var/spool/lipsync: Permission denied",
     f"cannot create a spool file in {SERVER_PATH}: Permission denied"),
    ("[Errno 2] No such file or directory: '/tmp/lipsync-spool-1 2.mp4'",
     f"[Errno 2] No such file or directory: '{SERVER_PATH}'"),
    ("see /models/g/1/model.onnx.", f"see {SERVER_PATH}."),
    ("(e.g. /srv/models/g/1)", f"(e.g. {SERVER_PATH})"),
    ("Triton at unix:///run/triton.sock is down", f"Triton at unix:{SERVER_PATH} is down"),
    # Not paths: fractions, words with a slash, relative paths, URLs.
    ("30000/1001 fps, I/O error, ./model.onnx, grpc://triton:8001/v2 and 'a' / 'b'",
     "30000/1001 fps, I/O error, ./model.onnx, grpc://triton:8001/v2 and 'a' / 'b'"),
])
def test_without_paths(text, public):
    assert without_paths(text) == public


@pytest.mark.parametrize("cls", [InternalError, ResourceExhausted])
def test_server_side_errors_hide_paths_and_log_them(cls, caplog):
    caplog.set_level(logging.WARNING, logger="lipsync_service.errors")
    detail = "media processing failed: [Errno 5] I/O error: '/tmp/lipsync-spool-abc.mp4'"
    exc = cls(detail)
    assert str(exc) == f"media processing failed: [Errno 5] I/O error: '{SERVER_PATH}'"
    assert exc.detail == detail and detail in caplog.text


def test_errors_about_the_clients_own_input_keep_their_text(caplog):
    # The offline runner's messages name the user's own files; model loading errors are translated where the
    # server builds its backend (inference.build_backend), not here.
    for cls in (InvalidInput, InferenceUnavailable, InferenceError):
        assert str(cls("video: cannot read /home/me/in.mp4: no such file")).endswith("/home/me/in.mp4: no such file")
    assert not caplog.records


def test_triton_errors_are_quoted_without_its_paths(caplog):
    from tritonclient.utils import InferenceServerException

    from lipsync_service.inference.triton import _translate

    caplog.set_level(logging.WARNING)
    remote = "failed to load 'g' version 1: Invalid argument: unable to load model '/models/g/1/model.plan'"
    error = _translate(InferenceServerException(remote, status="StatusCode.INTERNAL"), "triton:8001", "g", "inference")
    assert isinstance(error, InferenceError) and "'g'" in str(error) and "/models" not in str(error)
    assert f"unable to load model '{SERVER_PATH}'" in str(error)
    assert "/models/g/1/model.plan" in caplog.text
    down = _translate(InferenceServerException("no route to /var/run/triton.sock", status="StatusCode.UNAVAILABLE"),
                      "unix:///var/run/triton.sock", "g", "inference")
    assert isinstance(down, InferenceUnavailable) and "/var/run" not in str(down)
    assert str(down).startswith(f"Triton at unix:{SERVER_PATH} is unreachable")
