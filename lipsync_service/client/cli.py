"""`lipsync-client`: send a video and a speech track to the service and write the lip-synced MP4."""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

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


#: Seconds between the plain progress lines written where stderr is not a terminal (logs, CI).
PLAIN_INTERVAL_S = 10.0


class ProgressDisplay:
    """Progress of a count towards a total: a tqdm bar on a terminal, else a plain line every `interval_s`.

    The plain lines hold no control characters (no carriage returns, no escape sequences), so logs and CI
    output stay readable; the first update and `close` always write one. Thread-safe (the client reports
    from gRPC's sending thread and from the receiving one).

    Bar:   `run:  45%|████▌     | 45/100 [00:02<00:02, 19.57 frames/s]`
    Plain: `run: 45/100 frames (45%), 19.57 frames/s, elapsed 00:02, ETA 00:02`
    """

    def __init__(self, out: TextIO, desc: str, *, unit: str, unit_scale: bool = False,
                 enabled: bool = True, interval_s: float = PLAIN_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Set up the display (nothing is written before the first `update`).

        Args:
            out: where it goes (stderr); a bar when out.isatty(), plain lines otherwise.
            desc: the label before the numbers.
            unit: tqdm's unit, after the counts and in the rate: " frames" (-> "45/100 frames", "19.57 frames/s"),
                "B" with unit_scale (-> "4.29MB/9.54MB", "1.96MB/s").
            unit_scale: scale counts with k/M/G prefixes (bytes).
            enabled: False writes nothing (--quiet).
            interval_s: seconds between plain lines.
            clock: time source (tests).
        """
        self._out = out
        self._desc = desc
        self._unit = unit
        self._unit_scale = unit_scale
        self._enabled = enabled
        self._interval_s = interval_s
        self._clock = clock
        self._tty = enabled and out.isatty()
        self._bar: Any = None  # the tqdm bar, created on the first update on a terminal
        # "45/100 frames", or with scaled units "4.29MB/9.54MB".
        counts = "{n_fmt}{unit}/{total_fmt}{unit}" if unit_scale else "{n_fmt}/{total_fmt}{unit}"
        self._known = f"{{desc}}: {counts} ({{percentage:.0f}}%), {{rate_fmt}}, elapsed {{elapsed}}, " \
                      "ETA {remaining}{postfix}"
        self._unknown = "{desc}: {n_fmt}{unit}, {rate_fmt}, elapsed {elapsed}{postfix}"
        self._started = clock()
        self._last_line: float | None = None
        self._n = 0.0
        self._total: float | None = None
        self._postfix = ""
        self._written = True  # the latest state is on screen
        self._closed = False
        self._lock = threading.Lock()

    def update(self, n: float, total: float | None = None, postfix: str = "") -> None:
        """Show count `n` of `total` (None: unknown) and an extra note after the numbers."""
        if not self._enabled:
            return
        with self._lock:
            if self._closed:
                return
            self._n, self._postfix = n, postfix
            # An estimated total can turn out low: never show more than 100 %.
            self._total = None if total is None else max(total, n)
            self._written = False
            if self._tty:
                self._update_bar()
            elif self._last_line is None or self._clock() - self._last_line >= self._interval_s:
                self._write_line()

    def write(self, line: str) -> None:
        """Write a line of text without breaking the bar (tqdm redraws it below the line)."""
        with self._lock:
            if self._bar is not None:
                self._bar.write(line, file=self._out)
            else:
                self._out.write(line + "\n")
                self._out.flush()

    def close(self, *, done: bool = False) -> None:
        """Write the final state (done: the count is complete, so the total is the count) and end the display."""
        if not self._enabled:
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if done:
                self._total = self._n
            if self._tty:
                if self._bar is not None:
                    self._update_bar()
                    self._bar.close()
            elif not self._written:
                self._write_line()

    def _update_bar(self) -> None:
        from tqdm import tqdm

        if self._bar is None:
            sized = _terminal_columns(self._out) > 0
            # A terminal that states no size (a bare pseudo-terminal) makes tqdm draw nothing: 80 x 20 then.
            self._bar = tqdm(total=self._total, desc=self._desc, unit=self._unit, unit_scale=self._unit_scale,
                             file=self._out, dynamic_ncols=sized, ncols=None if sized else 80,
                             nrows=None if sized else 20, leave=True, mininterval=0.2)
        bar = self._bar
        if bar.total != self._total:
            bar.total = self._total
            bar.refresh()
        if self._postfix:
            bar.set_postfix_str(self._postfix, refresh=False)
        bar.update(self._n - bar.n)
        self._written = True

    def _write_line(self) -> None:
        from tqdm import tqdm

        now = self._clock()
        line = tqdm.format_meter(
            self._n, self._total, now - self._started, prefix=self._desc, unit=self._unit,
            unit_scale=self._unit_scale,
            postfix=self._postfix or None, bar_format=self._unknown if self._total is None else self._known,
        )
        # tqdm pads the rate to a width (" 9.52"): one space between words is enough in a log.
        self._out.write(re.sub(" {2,}", " ", line) + "\n")
        self._out.flush()
        self._last_line = now
        self._written = True


def _terminal_columns(out: TextIO) -> int:
    try:
        return os.get_terminal_size(out.fileno()).columns
    except (AttributeError, OSError, ValueError):  # no file descriptor, or not a terminal
        return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class _ClientProgress:
    """The client's display: upload percent, bytes and frames returned."""

    def __init__(self, out: TextIO, enabled: bool) -> None:
        self._display = ProgressDisplay(out, "lipsync-client upload", unit="B", unit_scale=True, enabled=enabled)

    def __call__(self, p: stream.Progress) -> None:
        self._display.update(p.bytes_sent, p.bytes_total,
                             f"received {_mb(p.bytes_received)}, {p.frames_received} frames")

    def write(self, line: str) -> None:
        self._display.write(line)

    def close(self, *, done: bool) -> None:
        self._display.close(done=done)


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
    printer = _ClientProgress(err, enabled=not args.quiet)

    summary = stream.CallSummary()

    def on_summary(received: stream.CallSummary) -> None:
        nonlocal summary
        summary = received

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
                on_progress=printer,
                on_summary=on_summary,
            )
            for response in responses:
                kind = response.WhichOneof("lipsync_response")
                if kind == "video_file_data":
                    out.write(response.video_file_data)
                elif kind == "service_info" and not args.quiet:
                    info = response.service_info
                    printer.write(
                        f"server request id {info.server_request_id} "
                        f"({info.feature_name} {info.feature_version}, model {info.model_info or '-'})"
                    )
        ok = True
    except grpc.RpcError as exc:
        printer.close(done=False)
        code = exc.code() if hasattr(exc, "code") else None
        name = code.name if code is not None else "UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        err.write(f"lipsync-client: call failed: {name}: {details}\n")
        return EXIT_CALL_FAILED
    except OSError as exc:
        printer.close(done=False)
        err.write(f"lipsync-client: {exc}\n")
        return EXIT_CALL_FAILED
    except KeyboardInterrupt:
        printer.close(done=False)
        err.write("lipsync-client: interrupted; the call was cancelled\n")
        return EXIT_INTERRUPTED
    finally:
        if not ok:
            # Never leave a truncated MP4 that looks like a result.
            _remove(output)
    printer.close(done=True)
    if not args.quiet:
        counts = summary.counts()
        err.write(f"wrote {output} ({output.stat().st_size} bytes){': ' + counts if counts else ''}\n")
    for line in summary.redrawn:
        err.write(f"re-drawn: {line}\n")
    for notice in summary.notices:
        err.write(f"note: {notice}\n")
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
