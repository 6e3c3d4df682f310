"""`lipsync-service train ...`: prepare data, run training, export weights.

torch is imported only inside the training subcommands (pip install '.[train]').
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import sys
from pathlib import Path

from lipsync_service.cli.common import EXIT_INTERRUPTED, fail, needs_extra
from lipsync_service.errors import LipsyncError

DEFAULT_CACHE = Path.home() / ".cache" / "lipsync-data"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` command (prepare, run, opening, shape, occlusion, export); each subcommand sets `func`."""
    train = subparsers.add_parser("train", help="build the training cache, train the default model, export it")
    sub = train.add_subparsers(dest="train_command", metavar="SUBCOMMAND", required=True)

    prep = sub.add_parser("prepare", help="detect, track and crop faces of talking-head videos into a cache",
                          description="Speech comes from the video's audio track or a WAV of the same name "
                          "(or NAME_audio.wav) beside it. Identities come from a NOTICE.md table with an "
                          "'identity' column in the folder, else the file name. Resumable: cached clips are skipped.")
    prep.add_argument("dirs", nargs="+", type=Path, help="folders of videos")
    prep.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"cache folder (default {DEFAULT_CACHE})")
    prep.add_argument("--val-identity", action="append", default=[],
                      help="identity held out for validation (repeatable); all its clips go to the val split")
    prep.add_argument("--exclude", action="append", default=[], help="file-name glob to skip (repeatable)")
    prep.add_argument("--face-size", type=int, default=96, help="crop size S (default 96)")
    prep.add_argument("--max-frames", type=int, default=None, help="cut every clip to this many frames")
    prep.set_defaults(func=_prepare)

    run = sub.add_parser("run", help="train (or resume) from a TOML config, e.g. configs/default.toml")
    run.add_argument("config", type=Path)
    run.add_argument("--out-dir", default=None, help="override [run] out_dir")
    run.add_argument("--cache", default=None, help="override [run] cache_dir")
    run.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (resume later)")
    run.set_defaults(func=_run)

    opening = sub.add_parser("opening", help="train the default model's speech->opening ensemble and opening "
                             "renderer, and export the served ONNX",
                             description="Needs mouth labels of the cache's frames: run "
                             "models/training/mouth_labels.py in the eval venv first (see models/MODEL_CARD.md).")
    # lipsync_models ships in the same distribution; this module imports numpy only (torch when run).
    from lipsync_models.training.opening_run import add_arguments

    add_arguments(opening)
    opening.set_defaults(func=_opening)

    shape = sub.add_parser("shape", help="train the speech->lip-shape ensemble (opening and width) and export "
                           "the `lip_shape` ONNX (mel [B,1,80,16] -> lip_shape [B,2])",
                           description="Needs lip-shape labels of the cache's frames: run "
                           "models/training/shape_labels.py in the eval venv first.")
    from lipsync_models.training.shape_run import add_arguments as add_shape_arguments

    add_shape_arguments(shape)
    shape.set_defaults(func=_shape)

    occlusion = sub.add_parser("occlusion", help="train the mouth-occlusion model (what covers the mouth: a hand, a "
                               "microphone, hair, a glass) and export its ONNX",
                               description="Reads the training clips' mouths with the service's own detector and "
                               "face mesh (cached), draws synthetic occluders with exact masks over them and trains a "
                               "small U-Net on canonical mouth crops. Held-out identities never enter (see "
                               "models/MODEL_CARD.md). Copy the ONNX to lipsync_service/core/assets/occlusion/ to "
                               "ship it.")
    from lipsync_models.training.occlusion import add_arguments as add_occlusion_arguments

    add_occlusion_arguments(occlusion)
    occlusion.set_defaults(func=_occlusion)

    exp = sub.add_parser("export", help="export trained generator weights (generator.pt) to ONNX")
    exp.add_argument("weights", type=Path,
                     help="generator.pt written at the end of `train run`, or a run's checkpoint.pt")
    exp.add_argument("--out", type=Path, required=True,
                     help="the .onnx file, e.g. triton_repo/opening_warp_rgb96/1/model.onnx")
    exp.add_argument("--code-gain", default=None,
                     help="served articulation gain: a number, or 'calibrate' to measure it on the cache's "
                     "validation clips (needs checkpoint.pt and --cache)")
    exp.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="cache for --code-gain calibrate")
    exp.set_defaults(func=_export)



def _prepare(args: argparse.Namespace) -> int:
    try:
        from lipsync_models.dataset import prepare
    except ImportError as exc:
        return fail("train prepare", needs_extra("train", exc))
    try:
        index = prepare(args.dirs, args.cache, args.val_identity, args.face_size, args.max_frames,
                        exclude=lambda name: any(fnmatch.fnmatch(name, p) for p in args.exclude),
                        progress=lambda line: print(line, file=sys.stderr, flush=True))
    except (ValueError, OSError, LipsyncError) as exc:
        return fail("train prepare", exc)
    clips = index["clips"]
    for split in ("train", "val"):
        chosen = [c for c in clips if c["split"] == split]
        frames = sum(c["valid_frames"] for c in chosen)
        people = sorted({c["identity"] for c in chosen})
        print(f"{split}: {len(chosen)} clips, {frames} frames with a face, {len(people)} identities")
    print(f"cache: {args.cache}")
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        from lipsync_models.training.trainer import Trainer, load_config
    except ImportError as exc:
        return fail("train run", needs_extra("train", exc))
    try:
        cfg = load_config(args.config, out_dir=args.out_dir, cache_dir=args.cache)
        final = Trainer(cfg).run(max_steps=args.max_steps)
    except (ValueError, OSError) as exc:
        return fail("train run", exc)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(final if final.exists() else "stopped before the end of the schedule; resume with the same command")
    return 0


def _opening(args: argparse.Namespace) -> int:
    return _run_module("train opening", "lipsync_models.training.opening_run", args)


def _shape(args: argparse.Namespace) -> int:
    return _run_module("train shape", "lipsync_models.training.shape_run", args)


def _occlusion(args: argparse.Namespace) -> int:
    return _run_module("train occlusion", "lipsync_models.training.occlusion", args)


def _run_module(command: str, module: str, args: argparse.Namespace) -> int:
    """Run a training module's `run(args)` (it needs torch) and print what it wrote."""
    try:
        import torch  # noqa: F401

        run = importlib.import_module(module).run
    except ImportError as exc:
        return fail(command, needs_extra("train", exc))
    try:
        print(run(args))
    except (ValueError, OSError) as exc:
        return fail(command, exc)
    return 0


def _export(args: argparse.Namespace) -> int:
    try:
        from lipsync_models.training.export import export_trained, measure_code_gain
    except ImportError as exc:
        return fail("train export", needs_extra("train", exc))
    try:
        gain = args.code_gain
        if gain == "calibrate":
            measured = measure_code_gain(args.weights, args.cache)
            print(f"calibrated on validation clips: {measured}", file=sys.stderr)
            gain = measured["code_gain"]
        path = export_trained(args.weights, args.out, None if gain is None else float(gain))
    except (ValueError, OSError) as exc:
        return fail("train export", exc)
    print(path)
    return 0
