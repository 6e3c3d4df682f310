"""tritonclient errors become ours at the boundary: unreachable/timeouts -> UNAVAILABLE, refusals -> INTERNAL."""

from __future__ import annotations

import pytest
from tritonclient.utils import InferenceServerException

from lipsync_service.errors import InferenceError, InferenceUnavailable
from lipsync_service.inference.triton import _translate
from lipsync_service.server.status import status_for


@pytest.mark.parametrize(
    ("status", "expected", "code"),
    [
        ("StatusCode.UNAVAILABLE", InferenceUnavailable, "UNAVAILABLE"),
        ("StatusCode.DEADLINE_EXCEEDED", InferenceUnavailable, "UNAVAILABLE"),
        ("StatusCode.INVALID_ARGUMENT", InferenceError, "INTERNAL"),
        ("StatusCode.INTERNAL", InferenceError, "INTERNAL"),
        (None, InferenceError, "INTERNAL"),
    ],
)
def test_status_mapping(status, expected, code) -> None:
    error = _translate(InferenceServerException("boom", status=status), "h:1", "m", "inference")
    assert type(error) is expected
    assert status_for(error).name == code
    assert "boom" in str(error) and "'m'" in str(error)


def test_non_triton_exceptions_are_inference_errors() -> None:
    error = _translate(ValueError("odd"), "h:1", "m", "inference")
    assert isinstance(error, InferenceError) and "odd" in str(error)
