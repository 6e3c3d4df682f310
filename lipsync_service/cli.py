"""The `lipsync-service` command: `serve` (the gRPC service), `run` (one job offline), and registered extras."""

from __future__ import annotations

import argparse
import importlib
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from lipsync_service import __version__, config, logs
from lipsync_service.client.flags import add_job_flags, job_config_from_args
from lipsync_service.errors import LipsyncError
from lipsync_service.settings import Settings, get_settings

# Modules that add subcommands: each exposes `register(subparsers)`, which adds its parsers and sets
# `func` (a callable taking the parsed args and returning the exit code) with `set_defaults`. A module
# that is not part of this installation is skipped.
EXTENSIONS = ("lipsync_service.models_cli", "lipsync_service.train_cli")


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
        print(f"lipsync-service: cannot start: {exc}", file=sys.stderr)
        return 2


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
    from lipsync_service.processors import build_processor
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
        print(f"\nlipsync-service run: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nlipsync-service run: interrupted; no output written", file=sys.stderr)
        return 130
    elapsed = time.monotonic() - progress.started
    print(f"\r{result.frames} frames ({result.duration_s:.2f} s of video) written to {output} in {elapsed:.1f} s "
          f"({result.frames / max(elapsed, 1e-6):.1f} fps)", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full command-line parser, extension subcommands included."""
    parser = argparse.ArgumentParser(prog="lipsync-service", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gRPC service (settings from NIM_*/NV_AI4M_* env vars)")
    serve.add_argument("--host", default=None, help="listen address (NIM_HOST)")
    serve.add_argument("--grpc-port", type=int, default=None, help="gRPC port (NIM_GRPC_API_PORT, default 8001)")
    serve.add_argument("--http-port", type=int, default=None, help="HTTP port (NIM_HTTP_API_PORT, default 8000)")
    serve.add_argument("--processor", choices=("neural", "passthrough"), default=None,
                       help="frame processor (NV_AI4M_LS_PROCESSOR)")
    serve.set_defaults(func=_serve)

    run = sub.add_parser("run", help="lip-sync one video offline, without a server")
    run.add_argument("--video", required=True, type=Path, help="input MP4 (H.264, constant frame rate)")
    run.add_argument("--audio", required=True, type=Path, help="speech audio, WAV or MP3")
    run.add_argument("--output", required=True, type=Path, help="output MP4")
    run.add_argument("--processor", choices=("neural", "passthrough"), default=None,
                     help="frame processor (NV_AI4M_LS_PROCESSOR)")
    add_job_flags(run)
    run.set_defaults(func=_run)

    for name in EXTENSIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
