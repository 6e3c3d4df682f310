"""Runs fuzz cases against a server over gRPC and judges each outcome.

A case passes when the call ends, within its deadline, with OK and an MP4 that decodes, or with a status a client
error earns (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, a server-side DEADLINE_EXCEEDED) and a message a person can act
on; CANCELLED only when the client itself went away. INTERNAL, UNKNOWN, UNAVAILABLE, the client's own deadline and
an empty or traceback-like message are failures.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import av
import grpc

from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2, lipsync_pb2_grpc
from lipsync_service.settings import Settings
from tests.fuzzing.cases import CANCEL_DOWNLOAD, CANCEL_UPLOAD, NEVER_READ, PAUSE_READ, Case

CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
                 grpc.StatusCode.DEADLINE_EXCEEDED}
# What gRPC's own client says when the call's deadline passes (the server never answered in time).
_CLIENT_DEADLINE = "Deadline Exceeded"
# The metadata key the server reads the session id from (its default NV_AI4M_SESSION_ID_METADATA_KEY).
SESSION_ID_KEY: str = Settings.model_fields["session_id_metadata_key"].default
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 2**20), ("grpc.max_send_message_length", 64 * 2**20)]


@dataclass
class Outcome:
    """What one call came to.

    Attributes:
        case: the case.
        code: the final status (OK, or the error's code; CANCELLED when the client left on purpose).
        message: the status message.
        seconds: wall time of the call.
        output_frames: frames in the output MP4 (OK only; -1 when it does not decode).
        problem: why this outcome is a failure, or "" when it is fine.
    """

    case: Case
    code: grpc.StatusCode
    message: str
    seconds: float
    output_frames: int = 0
    problem: str = ""


def _frames_in(data: bytes) -> int:
    """Video frames an output MP4 decodes to; -1 when it does not decode."""
    try:
        with av.open(io.BytesIO(data), format="mp4") as container:
            return sum(1 for _ in container.decode(video=0))
    except (av.error.FFmpegError, OSError, ValueError, IndexError):
        return -1


def judge(outcome: Outcome) -> str:
    """Why an outcome is a failure ("" when it is fine)."""
    case, code, msg = outcome.case, outcome.code, outcome.message
    if outcome.seconds > case.deadline_s:
        return f"took {outcome.seconds:.1f} s, past its {case.deadline_s:g} s deadline"
    if code == grpc.StatusCode.OK:
        if case.behaviour in (CANCEL_UPLOAD, NEVER_READ):
            return ""
        if outcome.output_frames <= 0:
            return "OK without a decodable MP4"
        return ""
    if case.expect_ok:
        return f"a valid call ended with {code.name}: {msg}"
    if code == grpc.StatusCode.CANCELLED:
        return "" if case.behaviour in (CANCEL_UPLOAD, CANCEL_DOWNLOAD, NEVER_READ) else "CANCELLED by the server"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and msg == _CLIENT_DEADLINE:
        return "the server did not answer within the call's deadline"
    if code not in CLIENT_ERRORS:
        return f"{code.name}: {msg}"
    if not msg.strip():
        return f"{code.name} without a message"
    if "Traceback" in msg or "Error(" in msg or len(msg) > 2000:
        return f"{code.name} with a message no person can act on: {msg[:200]}"
    return ""


def _paced(case: Case, sent: threading.Event, gone: threading.Event) -> Iterator[lipsync_pb2.LipsyncRequest]:
    for count, request in enumerate(case.build(), 1):
        if gone.is_set():
            return
        yield request
        if case.behaviour == CANCEL_UPLOAD and count >= case.cancel_after:
            sent.set()
            gone.wait(case.deadline_s)  # the upload stays open until the client has gone away
            return
    sent.set()


def run_case(channel: grpc.Channel, case: Case) -> Outcome:
    """Make the call a case describes on `channel` and judge it.

    Returns:
        The outcome, with `problem` set when it is a failure.
    """
    stub = lipsync_pb2_grpc.LipSyncServiceStub(channel)
    sent, gone = threading.Event(), threading.Event()
    start = time.monotonic()
    # The case's family and index go in the session id the server logs with the call, so a log line (a slow call,
    # a memory spike) leads back to the case that made it.
    call = stub.Lipsync(_paced(case, sent, gone), timeout=case.deadline_s,
                        metadata=((SESSION_ID_KEY, f"{case.family}-{case.index}"),))
    video = bytearray()
    code, message = grpc.StatusCode.OK, ""
    try:
        if case.behaviour in (CANCEL_UPLOAD, NEVER_READ):
            # Leaves without reading: after part of the upload, or once all of it is sent and a moment has passed.
            sent.wait(case.deadline_s)
            if case.behaviour == NEVER_READ:
                time.sleep(1.0)
            call.cancel()
            code = grpc.StatusCode.CANCELLED
        else:
            paused = False
            for response in call:
                kind = response.WhichOneof("lipsync_response")
                if kind != "video_file_data":
                    continue
                video += response.video_file_data
                if case.behaviour == PAUSE_READ and not paused:
                    paused = True
                    time.sleep(case.pause_s)
                elif case.behaviour == CANCEL_DOWNLOAD:
                    call.cancel()
                    code = grpc.StatusCode.CANCELLED
                    break
    except grpc.RpcError as err:
        code, message = err.code(), err.details() or ""
        if code == grpc.StatusCode.CANCELLED and case.behaviour in (CANCEL_UPLOAD, CANCEL_DOWNLOAD, NEVER_READ):
            message = "cancelled by the client"
    finally:
        gone.set()
    seconds = time.monotonic() - start
    outcome = Outcome(case, code, message, seconds)
    if code == grpc.StatusCode.OK and case.behaviour not in (CANCEL_UPLOAD, NEVER_READ, CANCEL_DOWNLOAD):
        outcome.output_frames = _frames_in(bytes(video))
    outcome.problem = judge(outcome)
    return outcome


def channel_for(target: str) -> grpc.Channel:
    """A plain channel to `target` with message limits above the server's."""
    return grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
