"""`python -m lipsync_service`: the service (`serve`) unless another subcommand is given."""

from __future__ import annotations

import sys

from lipsync_service.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["serve"]))
