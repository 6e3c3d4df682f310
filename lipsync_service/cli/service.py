"""The service verbs: `serve` (the gRPC service) and `run` (one job offline, no server)."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from lipsync_service import config, logs
from lipsync_service.cli.common import EXIT_INTERRUPTED, EXIT_OK, fail
from lipsync_service.client.flags import add_job_flags, job_config_from_args
from lipsync_service.errors import LipsyncError
from lipsync_service.settings import Settings, get_settings


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


class _Progress:
    """Prints frames done and speed to stderr, at most twice a second."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self, frames: int) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < 0.5:
                return
            self._last = now
        elapsed = now - self.started
        print(f"\r{frames} frames, {frames / max(elapsed, 1e-6):.1f} fps", end="", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    from lipsync_service import pipeline
    from lipsync_service.core.factory import build_processor
    from lipsync_service.speakers import load_json_file

    settings = _settings(args)
    logs.configure(settings.log_level)
    output = Path(args.output)
    progress = _Progress()
    try:
        cfg = config.from_proto(job_config_from_args(args, audio_path=args.audio))
        speakers = load_json_file(args.speaker_data_input) if args.speaker_data_input else None
        processor = build_processor(settings)
        result = pipeline.run_files(cfg, settings, processor, args.video, args.audio, output, speakers=speakers,
                                    background_path=args.background_audio_input, progress=progress)
    except (LipsyncError, ValueError) as exc:  # ValueError: a settings value the factory does not know
        print(file=sys.stderr)
        return fail("run", exc)
    except KeyboardInterrupt:
        print("\nlipsync-service run: interrupted; no output written", file=sys.stderr)
        return EXIT_INTERRUPTED
    elapsed = time.monotonic() - progress.started
    print(f"\r{result.frames} frames ({result.duration_s:.2f} s of video) written to {output} in {elapsed:.1f} s "
          f"({result.frames / max(elapsed, 1e-6):.1f} fps)", file=sys.stderr)
    return EXIT_OK
