"""The `lipsync-service` command: one verb per module of this package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lipsync_service import __version__
from lipsync_service.cli import evaluate, models, service, train, triton
from lipsync_service.cli.common import EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    """The full command-line parser."""
    parser = argparse.ArgumentParser(prog="lipsync-service", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for verbs in (service, models, triton, train, evaluate):
        verbs.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
