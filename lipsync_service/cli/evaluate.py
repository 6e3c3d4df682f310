"""The evaluation verbs: `eval` (lip-sync and score a clip) and `eval-env` (build the landmark venv it uses)."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from lipsync_service.cli.common import EXIT_OK, fail
from lipsync_service.errors import LipsyncError
from lipsync_service.evaluation import CREATE_ENV_SCRIPT, DEFAULT_LANDMARK_PYTHON, evaluate, format_table
from lipsync_service.evaluation.phones import read_transcript

# The venv folder that holds DEFAULT_LANDMARK_PYTHON (…/eval-venv/bin/python).
DEFAULT_ENV_DIR = DEFAULT_LANDMARK_PYTHON.parent.parent


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `eval` and `eval-env`; each sets `func`."""
    p = subparsers.add_parser("eval", help="lip-sync a video to a speech track and score sync, preservation, visemes")
    p.add_argument("--video", required=True, type=Path, help="input MP4 (H.264)")
    p.add_argument("--audio", required=True, type=Path, help="speech (WAV, MP3, or any file with an audio track)")
    p.add_argument("--out", type=Path, default=Path("eval_out"), help="output folder (default ./eval_out)")
    p.add_argument("--extend", choices=["forward", "reverse"], default="forward",
                   help="how the video is extended to the speech's length (default forward)")
    p.add_argument("--reference-audio", type=Path, default=None,
                   help="the video's own speech, for the reference score (default: its audio track)")
    p.add_argument("--transcript", default=None, metavar="TEXT|FILE",
                   help="the words of --audio (English), or a file holding them, for the phone alignment "
                   "(default: recognised by pocketsphinx, rougher)")
    p.add_argument("--reference-transcript", default=None, metavar="TEXT|FILE",
                   help="the words of the video's own speech (default: recognised)")
    p.add_argument("--model-repository", type=Path, default=None, help="override NV_AI4M_LS_MODEL_REPOSITORY")
    p.add_argument("--landmark-python", type=Path, default=DEFAULT_LANDMARK_PYTHON,
                   help=f"python of the eval venv with mediapipe (default {DEFAULT_LANDMARK_PYTHON}; "
                   "`lipsync-service eval-env` creates it)")
    p.set_defaults(func=_eval)

    env = subparsers.add_parser(
        "eval-env", help="create the separate venv with the independent landmark model that `eval` measures with",
        description="MediaPipe pins an older protobuf than the service, so it lives in a venv of its own. "
        "Its weights ship inside its wheel: nothing is downloaded at run time.")
    env.add_argument("venv", nargs="?", type=Path, default=DEFAULT_ENV_DIR,
                     help=f"where to create it (default {DEFAULT_ENV_DIR})")
    env.set_defaults(func=_eval_env)


def _eval(args: argparse.Namespace) -> int:
    from lipsync_service.settings import get_settings

    settings = get_settings()
    if args.model_repository is not None:
        settings = settings.model_copy(update={"model_repository": args.model_repository})
    try:
        scores = evaluate(args.video, args.audio, args.out, args.extend, settings, args.landmark_python,
                          args.reference_audio, _text(args.transcript), _text(args.reference_transcript))
    except LipsyncError as exc:
        return fail("eval", exc)
    print(format_table(scores))
    print(f"details: {args.out / 'scores.json'}")
    return EXIT_OK


def _text(value: str | None) -> str | None:
    return None if value is None else read_transcript(value)


def _eval_env(args: argparse.Namespace) -> int:
    result = subprocess.run(["bash", str(CREATE_ENV_SCRIPT), str(args.venv)], check=False)
    if result.returncode != 0:
        return fail("eval-env", f"{CREATE_ENV_SCRIPT.name} exited with status {result.returncode}")
    return EXIT_OK
