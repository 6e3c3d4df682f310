"""`lipsync-client`: send a video and a speech track to the service and write the lip-synced MP4."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import grpc

from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2_grpc
from lipsync_service.client import channel as channels
from lipsync_service.client import stream
from lipsync_service.client.flags import add_job_flags, job_config_from_args
from lipsync_service.errors import InvalidInput
from lipsync_service.speakers import load_json_file

EXIT_OK = 0
EXIT_CALL_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The client's argument parser: the reference CLI flags plus pacing, deadline and progress options."""
    parser = argparse.ArgumentParser(
        prog="lipsync-client",
        description="Lip-sync a video to a new speech track using a LipSync gRPC service.",
    )
    conn = parser.add_argument_group("connection")
    conn.add_argument("--target", default="127.0.0.1:8001", help="host:port of the service (default %(default)s)")
    conn.add_argument(
        "--ssl-mode",
        default="DISABLED",
        type=str.upper,
        choices=channels.SSL_MODES,
        help="DISABLED, TLS or MTLS (any case; default %(default)s)",
    )
    conn.add_argument("--ssl-key", help="client private key (PEM), for MTLS")
    conn.add_argument("--ssl-cert", help="client certificate (PEM), for MTLS")
    conn.add_argument("--ssl-root-cert", help="CA certificate (PEM) that signed the server's; system roots if unset")
    conn.add_argument("--ssl-server-name", help="expected name in the server certificate, if not the target host")
    conn.add_argument("--client-session-id", help="sent as request metadata and echoed in the service info")
    conn.add_argument("--timeout", type=float, default=None, help="deadline of the whole call in seconds")

    io_group = parser.add_argument_group("inputs and output")
    io_group.add_argument("--video-input", required=True, help="input MP4 (H.264, constant frame rate)")
    io_group.add_argument("--audio-input", required=True, help="speech audio, WAV or MP3")
    io_group.add_argument("--output", default="output.mp4", help="output MP4 (default %(default)s)")
    io_group.add_argument(
        "--realtime",
        action="store_true",
        help="pace the upload at the video's playback speed (demos, streaming tests)",
    )
    io_group.add_argument("--quiet", action="store_true", help="no progress on stderr")

    # The job flags (--extend-audio ... --background-audio-volume) are shared with `lipsync-service run`.
    add_job_flags(parser)
    return parser


def _media_duration_s(path: str | Path) -> float:
    import av  # only for --realtime

    try:
        with av.open(str(path)) as container:
            if container.duration:
                return container.duration / 1_000_000
    except av.FFmpegError as exc:
        raise InvalidInput(f"--realtime: cannot read the duration of {path}: {exc}") from exc
    raise InvalidInput(f"--realtime: {path} does not state its duration")


class _ProgressPrinter:
    """Bytes sent and received on stderr, at most a few times a second."""

    def __init__(self, out: TextIO, enabled: bool) -> None:
        self._out = out
        self._enabled = enabled
        self._last = 0.0
        self._tty = out.isatty()
        # gRPC pulls requests on its own thread: sends and receives report from two threads.
        self._lock = threading.Lock()

    def __call__(self, p: stream.Progress, final: bool = False) -> None:
        if not self._enabled:
            return
        with self._lock:
            now = time.monotonic()
            if not final and now - self._last < (0.2 if self._tty else 2.0):
                return
            self._last = now
            self._write(p, final)

    def _write(self, p: stream.Progress, final: bool) -> None:
        line = (
            f"sent {p.bytes_sent / 1e6:.1f}/{p.bytes_total / 1e6:.1f} MB, "
            f"received {p.bytes_received / 1e6:.1f} MB"
        )
        self._out.write(("\r" + line) if self._tty else line + "\n")
        if final and self._tty:
            self._out.write("\n")
        self._out.flush()


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def run(args: argparse.Namespace, err: TextIO | None = None) -> int:
    """Run one call for parsed arguments.

    Args:
        args: parsed by `build_parser()`.
        err: where progress and errors go; sys.stderr when None.

    Returns:
        The process exit code: 0 on success, 1 when the call failed, 2 for unusable arguments.
    """
    err = err if err is not None else sys.stderr
    try:
        for flag, path in (("--video-input", args.video_input), ("--audio-input", args.audio_input)):
            if not Path(path).is_file():
                raise InvalidInput(f"{flag} {path}: no such file")
        config = job_config_from_args(args, audio_path=Path(args.audio_input))
        speakers = (
            stream.speaker_info_messages(load_json_file(Path(args.speaker_data_input)))
            if args.speaker_data_input
            else []
        )
        pace = _media_duration_s(args.video_input) if args.realtime else None
        channel = channels.create_channel(
            args.target,
            ssl_mode=args.ssl_mode,
            root_cert=args.ssl_root_cert,
            cert=args.ssl_cert,
            key=args.ssl_key,
            server_name=args.ssl_server_name,
        )
    except InvalidInput as exc:
        err.write(f"lipsync-client: {exc}\n")
        return EXIT_USAGE

    output = Path(args.output)
    printer = _ProgressPrinter(err, enabled=not args.quiet)
    progress_seen = stream.Progress()

    def on_progress(p: stream.Progress) -> None:
        nonlocal progress_seen
        progress_seen = p
        printer(p)

    ok = False
    try:
        with channel, open(output, "wb") as out:
            stub = lipsync_pb2_grpc.LipSyncServiceStub(channel)
            responses = stream.lipsync(
                stub,
                config,
                args.video_input,
                args.audio_input,
                background=args.background_audio_input or None,
                speakers=speakers,
                metadata=channels.call_metadata(args.client_session_id),
                timeout=args.timeout,
                upload_seconds=pace,
                on_progress=on_progress,
            )
            for response in responses:
                kind = response.WhichOneof("lipsync_response")
                if kind == "video_file_data":
                    out.write(response.video_file_data)
                elif kind == "service_info" and not args.quiet:
                    info = response.service_info
                    err.write(
                        f"server request id {info.server_request_id} "
                        f"({info.feature_name} {info.feature_version}, model {info.model_info or '-'})\n"
                    )
        ok = True
    except grpc.RpcError as exc:
        printer(progress_seen, final=True)
        code = exc.code() if hasattr(exc, "code") else None
        name = code.name if code is not None else "UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        err.write(f"lipsync-client: call failed: {name}: {details}\n")
        return EXIT_CALL_FAILED
    except OSError as exc:
        err.write(f"lipsync-client: {exc}\n")
        return EXIT_CALL_FAILED
    except KeyboardInterrupt:
        err.write("lipsync-client: interrupted; the call was cancelled\n")
        return EXIT_INTERRUPTED
    finally:
        if not ok:
            # Never leave a truncated MP4 that looks like a result.
            _remove(output)
    printer(progress_seen, final=True)
    if not args.quiet:
        err.write(f"wrote {output} ({output.stat().st_size} bytes)\n")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `lipsync-client`.

    Args:
        argv: arguments without the program name; sys.argv[1:] when None.

    Returns:
        The exit code (also used by the console script).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
