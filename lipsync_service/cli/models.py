"""`lipsync-service models ...`: import Wav2Lip checkpoints, write Triton model repositories, build TensorRT engines."""

from __future__ import annotations

import argparse
import os
import shlex
import tempfile
from pathlib import Path

from lipsync_service.cli.common import fail, needs_extra
from lipsync_service.errors import LipsyncError
from lipsync_service.inference.repository import Target
from lipsync_service.settings import get_settings

_REPOSITORY_ENV = "NV_AI4M_LS_MODEL_REPOSITORY"

_TRUST_HELP = (
    "allow checkpoints that contain pickled Python objects besides tensors (torch.load weights_only=False). "
    "Unpickling can execute code: use only for files whose origin you trust"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `models` command and its subcommands (each sets `func`, returning the exit code)."""
    models = subparsers.add_parser("models", help="import checkpoints, build model repositories and engines")
    sub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND", required=True)

    imp = sub.add_parser(
        "import-wav2lip",
        help="load a Wav2Lip / Wav2Lip-GAN generator checkpoint you own and write it into a model repository",
        description="Needs torch (pip install '.[train]'). The checkpoint is checked tensor by tensor; a file "
        "that does not fit is refused with the missing, unexpected and wrongly shaped tensors.",
    )
    imp.add_argument("checkpoint", type=Path, help="the .pth file (zip or legacy torch format)")
    imp.add_argument("--repo", type=Path, default=None,
                     help="model repository to write into (default: NV_AI4M_LS_MODEL_REPOSITORY when it is set, "
                     "else ~/.local/share/lipsync-service/models, under $XDG_DATA_HOME when that is set)")
    imp.add_argument("--name", default="wav2lip", help="model name in the repository (default: wav2lip)")
    imp.add_argument(
        "--target",
        choices=[t.value for t in Target if t is not Target.TENSORRT_PLAN],
        default=Target.PYTHON_ONNX.value,
        help="python_onnx (embedded ORT and the pytriton Triton) or onnxruntime_onnx (NGC Triton); default python_onnx",
    )
    imp.add_argument("--max-batch", type=int, default=16, help="max_batch_size (default 16)")
    imp.add_argument("--trusted", action="store_true", help=_TRUST_HELP)
    imp.set_defaults(func=_import_wav2lip)

    repo = sub.add_parser(
        "build-repo", help="write <out>/<name>/config.pbtxt and a version folder for a generator ONNX"
    )
    repo.add_argument("--target", required=True, choices=[t.value for t in Target])
    repo.add_argument("--onnx", required=True, type=Path, help="the generator's ONNX file (face, mel -> output)")
    repo.add_argument("--out", required=True, type=Path, help="model repository folder")
    repo.add_argument("--name", default="lipsync_generator", help="model name (default: lipsync_generator)")
    repo.add_argument("--version", default="1", help="version folder (default: 1)")
    repo.add_argument("--max-batch", type=int, default=16, help="max_batch_size (default 16)")
    repo.add_argument("--instances", type=int, default=1, help="instances per device (default 1)")
    repo.add_argument("--cpu", action="store_true", help="onnxruntime_onnx on CPU instances (KIND_CPU)")
    repo.add_argument("--queue-delay-us", type=int, default=2000, help="dynamic batcher max queue delay (default 2000)")
    repo.add_argument("--fp32", action="store_true", help="tensorrt_plan: build without FP16 kernels")
    repo.add_argument("--cache-dir", type=Path, default=None, help="engine cache (default: NV_AI4M_ENGINE_CACHE_DIR)")
    repo.set_defaults(func=_build_repo)

    engine = sub.add_parser("build-engine", help="build (or reuse from the cache) a TensorRT engine; needs a GPU")
    engine.add_argument("--onnx", required=True, type=Path)
    engine.add_argument("--max-batch", type=int, default=16)
    engine.add_argument("--fp32", action="store_true", help="build without FP16 kernels")
    engine.add_argument("--cache-dir", type=Path, default=None, help="engine cache (default: NV_AI4M_ENGINE_CACHE_DIR)")
    engine.set_defaults(func=_build_engine)



def _import_wav2lip(args: argparse.Namespace) -> int:
    from lipsync_service.inference.repository import write_model

    try:
        from lipsync_models.checkpoint import import_wav2lip
        from lipsync_models.export import export_onnx
    except ImportError as exc:
        return fail("models import-wav2lip", needs_extra("train", exc))
    repo = args.repo or _user_repository()
    try:
        model = import_wav2lip(args.checkpoint, trusted=args.trusted)
        with tempfile.TemporaryDirectory() as tmp:
            description = f"Wav2Lip ({args.checkpoint.name})"
            onnx_path = export_onnx(model, Path(tmp) / "model.onnx", 96, description=description)
            folder = write_model(Target(args.target), onnx_path, repo, args.name, max_batch=args.max_batch, gpu=True)
    except LipsyncError as exc:
        return fail("models import-wav2lip", exc)
    print(f"imported {args.checkpoint} as model {args.name!r} into {folder}")
    print(f"serve it with: NV_AI4M_LS_MODEL_REPOSITORY={shlex.quote(str(Path(repo).resolve()))} "
          f"NV_AI4M_LS_MODEL_NAME={shlex.quote(args.name)} lipsync-service serve")
    return 0


def _user_repository() -> Path:
    """Where import-wav2lip writes without --repo: the repository the environment names, else one of the user's.

    Never the service's default repository: that one is inside the installed package (or the checkout), which an
    upgrade replaces and which may not be writable.
    """
    if os.environ.get(_REPOSITORY_ENV):
        return get_settings().model_repository
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "lipsync-service" / "models"


def _build_repo(args: argparse.Namespace) -> int:
    from lipsync_service.inference.repository import write_model

    target = Target(args.target)
    try:
        plan = None
        if target is Target.TENSORRT_PLAN:
            from lipsync_service.inference.tensorrt import build_engine

            plan = build_engine(args.onnx, args.max_batch, fp16=not args.fp32, cache_dir=_cache_dir(args))
        folder = write_model(
            target,
            args.onnx,
            args.out,
            args.name,
            max_batch=args.max_batch,
            instances=args.instances,
            gpu=not args.cpu,
            queue_delay_us=args.queue_delay_us,
            version=args.version,
            plan_path=plan,
        )
    except LipsyncError as exc:
        return fail("models build-repo", exc)
    print(f"wrote {target.value} model {args.name!r} to {folder}")
    return 0


def _build_engine(args: argparse.Namespace) -> int:
    from lipsync_service.inference.tensorrt import build_engine

    try:
        path = build_engine(args.onnx, args.max_batch, fp16=not args.fp32, cache_dir=_cache_dir(args))
    except LipsyncError as exc:
        return fail("models build-engine", exc)
    print(path)
    return 0


def _cache_dir(args: argparse.Namespace) -> Path:
    return args.cache_dir or get_settings().engine_cache_dir
