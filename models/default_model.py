"""Writes the committed default model repository entry (triton_repo/lipsync_generator) from a generator.

Until trained weights exist, the default is our generator at a deterministic, UNTRAINED initialisation
(seed 0): it satisfies the serving contract but does not lip-sync. Run:
`python -m lipsync_models.default_model [--checkpoint CKPT] [--out triton_repo]`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from lipsync_models.export import export_onnx
from lipsync_models.generator import build_generator, load_generator
from lipsync_service.inference.repository import Target, write_model

DEFAULT_NAME = "lipsync_generator"
DEFAULT_MAX_BATCH = 32
REPO_ROOT = Path(__file__).resolve().parent.parent


def write_default(out: Path, checkpoint: Path | None = None, seed: int = 0) -> Path:
    """Export the generator (trained checkpoint, or the seeded untrained one) as the python_onnx default model.

    Args:
        out: the model repository folder.
        checkpoint: a generator checkpoint (lipsync_models.generator.save_generator format), or None.
        seed: initialisation seed when no checkpoint is given.

    Returns:
        The model folder.
    """
    if checkpoint is None:
        model = build_generator(seed=seed)
        description = f"lipsync-gru-unet-v1 UNTRAINED (seed {seed} initialisation)"
    else:
        model = load_generator(checkpoint)
        description = f"{model.config.architecture} trained ({Path(checkpoint).name})"
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "model.onnx", model.config.face_size, description=description)
        return write_model(Target.PYTHON_ONNX, onnx_path, out, DEFAULT_NAME, max_batch=DEFAULT_MAX_BATCH, gpu=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "triton_repo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_default(args.out, args.checkpoint, args.seed))


if __name__ == "__main__":
    main()
