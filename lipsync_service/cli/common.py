"""What every `lipsync-service` verb shares: exit codes, the error line, the extra a verb needs."""

from __future__ import annotations

import sys

# Exit codes: 0 success, 1 the command failed (message on stderr), 2 bad usage (argparse's own),
# 130 interrupted by Ctrl-C (128 + SIGINT, the shell convention).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def fail(command: str, exc: BaseException | str) -> int:
    """Print `lipsync-service COMMAND: error: ...` to stderr and return EXIT_FAILED."""
    print(f"lipsync-service {command}: error: {exc}", file=sys.stderr)
    return EXIT_FAILED


def needs_extra(extra: str, exc: ImportError) -> str:
    """The message for a verb whose optional dependencies are not installed."""
    return (f"this command needs the '{extra}' extra, which is not installed ({exc}); "
            f"install it with: pip install 'lipsync-service[{extra}]' (from a checkout: pip install '.[{extra}]')")
