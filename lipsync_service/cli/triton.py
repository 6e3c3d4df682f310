"""`lipsync-service triton`: a local Triton server (the `triton` extra's tritonserver) for `serve` to use."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from lipsync_service.cli.common import EXIT_OK, fail, needs_extra
from lipsync_service.cli.service import Interrupted, interruptible
from lipsync_service.errors import InferenceUnavailable
from lipsync_service.settings import get_settings

# Triton's own defaults (8000-8002) are the service's ports: these leave them to `serve`.
DEFAULT_GRPC_PORT = 8101
DEFAULT_HTTP_PORT = 8100
DEFAULT_METRICS_PORT = 8102


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `triton` verb (sets `func`)."""
    triton = subparsers.add_parser(
        "triton",
        help="run a local Triton server on a model repository (needs the 'triton' extra)",
        description="Start the tritonserver binary of the nvidia-pytriton wheel (pip install '.[triton]'; Python "
        "backend only, so python_onnx models) on loopback ports, wait until it and every model are ready, print "
        "how to point `lipsync-service serve` at it, and run until Ctrl-C or SIGTERM stops it.",
    )
    triton.add_argument("--model-repository", type=Path, default=None,
                        help="model repository to serve (default: the service's, NV_AI4M_LS_MODEL_REPOSITORY)")
    triton.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT,
                        help=f"gRPC port on 127.0.0.1 (default {DEFAULT_GRPC_PORT}; 0: any free port)")
    triton.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT,
                        help=f"HTTP port on 127.0.0.1 (default {DEFAULT_HTTP_PORT}; 0: any free port)")
    triton.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
                        help=f"metrics port (default {DEFAULT_METRICS_PORT}; 0: any free port)")
    triton.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for the server and its models to be ready (default 120)")
    triton.set_defaults(func=_triton)


def _triton(args: argparse.Namespace) -> int:
    try:
        import pytriton  # noqa: F401 - only to tell whether the extra is installed
    except ImportError as exc:
        return fail("triton", needs_extra("triton", exc))
    from lipsync_service.inference.local_triton import LocalTriton

    repository = Path(args.model_repository or get_settings().model_repository)
    if not repository.is_dir():
        return fail("triton", f"no model repository at {repository}")
    # The handlers stay in place (ignoring further signals) until the server is stopped: a second Ctrl-C cannot
    # leave it running.
    with interruptible():
        server: LocalTriton | None = None
        try:
            server = LocalTriton(repository, grpc_port=args.grpc_port, http_port=args.http_port,
                                 metrics_port=args.metrics_port)
            print(f"starting Triton on {server.model_repository} (log: {server.log_path})", file=sys.stderr)
            server.start(timeout_s=args.timeout)
            print(f"Triton is ready: gRPC {server.url}, HTTP {server.http_url}", flush=True)
            print(f"serve with: NV_AI4M_LS_BACKEND=triton NV_AI4M_TRITON_URL={shlex.quote(server.url)} "
                  "lipsync-service serve", flush=True)
            print("Ctrl-C stops it", file=sys.stderr, flush=True)
            status = server.wait()
            return fail("triton", f"tritonserver exited with status {status}:\n{server.log_tail()}")
        except InferenceUnavailable as exc:
            return fail("triton", exc)
        except (KeyboardInterrupt, Interrupted):
            print("stopping Triton", file=sys.stderr, flush=True)
            return EXIT_OK
        finally:
            if server is not None:
                server.cleanup()
