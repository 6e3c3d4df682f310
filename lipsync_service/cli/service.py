"""The service verbs: `serve` (the gRPC service) and `run` (one job offline, no server)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lipsync_service import config, logs
from lipsync_service.cli.common import EXIT_OK, fail
from lipsync_service.client.flags import add_job_flags, job_config_from_args
from lipsync_service.errors import LipsyncError
from lipsync_service.inference.describe import describe_model
from lipsync_service.settings import Settings, get_settings

if TYPE_CHECKING:
    from lipsync_service.inference.base import GeneratorBackend
    from lipsync_service.pipeline import JobProgress


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `serve` and `run`; each sets `func`."""
    serve = subparsers.add_parser("serve", help="run the gRPC service (settings from NIM_*/NV_AI4M_* env vars)")
    serve.add_argument("--host", default=None, help="listen address (NIM_HOST)")
    serve.add_argument("--grpc-port", type=int, default=None, help="gRPC port (NIM_GRPC_API_PORT, default 8001)")
    serve.add_argument("--http-port", type=int, default=None, help="HTTP port (NIM_HTTP_API_PORT, default 8000)")
    serve.add_argument("--processor", choices=("neural", "passthrough"), default=None,
                       help="frame processor (NV_AI4M_LS_PROCESSOR)")
    serve.set_defaults(func=_serve)

    run = subparsers.add_parser("run", help="lip-sync one video offline, without a server")
    run.add_argument("--video", required=True, type=Path, help="input MP4 (H.264, constant frame rate)")
    run.add_argument("--audio", required=True, type=Path, help="speech audio, WAV or MP3")
    run.add_argument("--output", required=True, type=Path, help="output MP4")
    run.add_argument("--processor", choices=("neural", "passthrough"), default=None,
                     help="frame processor (NV_AI4M_LS_PROCESSOR)")
    add_job_flags(run)
    run.set_defaults(func=_run)


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with the command line's overrides."""
    overrides = {k: v for k, v in {
        "processor": getattr(args, "processor", None),
        "grpc_port": getattr(args, "grpc_port", None),
        "http_port": getattr(args, "http_port", None),
        "host": getattr(args, "host", None),
    }.items() if v is not None}
    settings = get_settings()
    return settings.model_copy(update=overrides) if overrides else settings


def _serve(args: argparse.Namespace) -> int:
    from lipsync_service.server.app import StartupError, serve

    settings = _settings(args)
    logs.configure(settings.log_level)
    try:
        return serve(settings)
    except StartupError as exc:
        return fail("serve", f"cannot start: {exc}")


def _load_backend(settings: Settings) -> GeneratorBackend | None:
    """The generator backend the settings' processor needs, or None when it needs none."""
    from lipsync_service.core.factory import uses_backend
    from lipsync_service.inference import build_backend

    return build_backend(settings) if uses_backend(settings) else None


class _Progress:
    """Frames done of the expected total, percent, speed and ETA on stderr: a bar on a terminal, else plain lines."""

    def __init__(self) -> None:
        from lipsync_service.client.cli import ProgressDisplay

        self.started = time.monotonic()
        self._display = ProgressDisplay(sys.stderr, "run", unit=" frames")

    def __call__(self, p: JobProgress) -> None:
        self._display.update(p.frames, p.total)

    def close(self, *, done: bool) -> None:
        self._display.close(done=done)


class Interrupted(BaseException):
    """Raised in the main thread by the SIGINT/SIGTERM handler of `interruptible` (`run`, `triton`); a BaseException,
    so no `except Exception` on the way up swallows it, while every `finally` (the pipeline's removal of its
    temporary output, stopping a server) runs. `signum` says which signal: exit with 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into Interrupted while the block runs (main thread only).

    After the first signal both are ignored, so a second Ctrl-C cannot cut short the clean-up it started.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: object) -> None:
        for caught in previous:
            signal.signal(caught, signal.SIG_IGN)
        raise Interrupted(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for restored, old in previous.items():
            signal.signal(restored, old)


def _run(args: argparse.Namespace) -> int:
    from lipsync_service import pipeline
    from lipsync_service.core.factory import build_processor
    from lipsync_service.speakers import load_json_file

    settings = _settings(args)
    logs.configure(settings.log_level)
    output = Path(args.output)
    progress = _Progress()
    try:
        with interruptible():
            cfg = config.from_proto(job_config_from_args(args, audio_path=args.audio))
            speakers = load_json_file(args.speaker_data_input) if args.speaker_data_input else None
            backend = _load_backend(settings)
            processor = build_processor(settings, backend)
            print(describe_model(settings, backend.spec if backend is not None else None), file=sys.stderr)
            result = pipeline.run_files(cfg, settings, processor, args.video, args.audio, output,
                                        speakers=speakers, background_path=args.background_audio_input,
                                        on_progress=progress)
    except (LipsyncError, ValueError) as exc:  # ValueError: a settings value the factory does not know
        progress.close(done=False)
        return fail("run", exc)
    except (KeyboardInterrupt, Interrupted) as exc:
        # run_files removed its temporary file on the way up: nothing of the output is left.
        progress.close(done=False)
        signum = exc.signum if isinstance(exc, Interrupted) else int(signal.SIGINT)
        print(f"lipsync-service run: interrupted by {signal.Signals(signum).name}; no output written",
              file=sys.stderr)
        return 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    progress.close(done=True)
    elapsed = time.monotonic() - progress.started
    print(f"{result.frames} frames ({result.duration_s:.2f} s of video) written to {output} in {elapsed:.1f} s "
          f"({result.frames / max(elapsed, 1e-6):.1f} fps)", file=sys.stderr)
    for run in result.redrawn:
        print(f"re-drawn: {run.describe()}", file=sys.stderr)
    for notice in result.notices():
        print(f"note: {notice}", file=sys.stderr)
    return EXIT_OK
