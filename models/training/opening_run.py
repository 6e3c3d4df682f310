"""Reproduce the round-2 default model: speech MLP + opening renderer from a prepared cache, then export.

`python -m lipsync_models.training.opening_run CACHE LABELS BASE_CHECKPOINT OUT_DIR [--render-seconds 480]`
(labels from mouth_labels.py, base: the round-1 run's checkpoint.pt). Writes opening_net.pt, renderer.pt and
model.onnx into OUT_DIR and prints the MLP's held-out r per validation clip.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def gather(cache: Path, labels: dict[str, np.ndarray], split: str):
    """Per clip of a split: (name, mel windows, z-scored openings) of the frames with a face and a label."""
    from lipsync_models.training import opening as op
    from lipsync_models.training.data import load_clips

    out = []
    for clip in load_clips(cache, split):
        z = op.zscore_labels(labels[clip.name])
        ok = np.isfinite(z) & clip.valid
        out.append((clip.name, op.mel_windows(clip)[ok], z[ok]))
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line entry (see the module docstring)."""
    import torch

    from lipsync_models.training import opening as op
    from lipsync_models.training.data import load_clips
    from lipsync_models.training.export import load_generator
    from lipsync_models.training.opening_render import finetune

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("cache", type=Path)
    ap.add_argument("labels", type=Path)
    ap.add_argument("base", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--mlp-steps", type=int, default=3000)
    ap.add_argument("--render-steps", type=int, default=5000)
    ap.add_argument("--render-seconds", type=float, default=480.0)
    ap.add_argument("--gain", type=float, default=1.5)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    labels = op.load_labels(args.labels)
    train = gather(args.cache, labels, "train")
    x = np.concatenate([t[1] for t in train])
    y = np.concatenate([t[2] for t in train])
    net = op.train_opening_net(x, y, steps=args.mlp_steps)
    torch.save(net.state_dict(), args.out / "opening_net.pt")
    print(f"mlp train r {op.pearson(op.predict(net, x), y):.3f}")
    for name, xv, yv in gather(args.cache, labels, "val"):
        print(f"mlp held-out r {name} {op.pearson(op.predict(net, xv), yv):.3f}")
    finetune(load_generator(args.base), load_clips(args.cache, "train"), labels, args.out / "renderer.pt",
             steps=args.render_steps, max_seconds=args.render_seconds)
    op.export_served(args.out / "renderer.pt", args.out / "opening_net.pt", args.out / "model.onnx", gain=args.gain)
    print(f"wrote {args.out / 'model.onnx'}")


if __name__ == "__main__":
    main()
