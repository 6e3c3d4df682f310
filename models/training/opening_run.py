"""Train the default model: speech -> opening ensemble, opening renderer (L1, then optionally sharpened with an
adversarial loss), then export the served ONNX.

`lipsync-service train opening CACHE LABELS OUT_DIR --base CHECKPOINT [--adv-seconds 1200]` (or `--renderer
renderer.pt` to start from a trained renderer; labels from mouth_labels.py). Writes opening_net.pt, renderer.pt
and model.onnx into OUT_DIR and prints each training clip's audio-video offset and the ensemble's held-out r
per validation clip.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import numpy as np


def clip_envelope(entry: dict, frames: int) -> np.ndarray:
    """Per-frame loudness of a cached clip's own speech (the file `train prepare` read it from)."""
    from lipsync_service.evaluation import load_speech, loudness_envelope

    source = entry.get("audio") or entry["video"]
    if not Path(source).exists():
        raise FileNotFoundError(f"speech of {entry['name']} not found at {source} (moved since `train prepare`?)")
    return loudness_envelope(load_speech(Path(source)), float(Fraction(entry["fps"])), frames)


def gather(cache: Path, labels: dict[str, np.ndarray], split: str, max_offset: int = 0):
    """Per clip of a split: (name, offset, mel windows, z-scored openings), labels shifted by the clip's offset.

    Args:
        cache: the prepared cache.
        labels: clip name -> raw openings (mouth_labels.py).
        split: "train" or "val".
        max_offset: largest audio-video offset searched per clip (0: no shift).
    """
    from lipsync_models.training import opening as op

    return gather_aligned(cache, labels, split, max_offset, op.zscore_labels, "mouth_labels.py")


def gather_aligned(cache: Path, labels: dict[str, np.ndarray], split: str, max_offset: int, zscore,
                   labeller: str):
    """Per clip of a split: (name, offset, mel windows, z-scored labels), the labels shifted by the clip's offset.

    Labels are [N] openings or [N, C] columns whose first is the opening; the offset is searched on the opening
    against the clip's own loudness and applies to every column; frames with a missing value are left out.

    Args:
        cache: the prepared cache.
        labels: clip name -> raw labels per frame.
        split: "train" or "val".
        max_offset: largest audio-video offset searched per clip (0: no shift).
        zscore: per-clip normalisation of one clip's labels.
        labeller: the script that writes the labels (named in errors).

    Raises:
        ValueError: a clip has no labels, or labels of another length than the cache.
    """
    from lipsync_models.training import opening as op
    from lipsync_models.training.data import load_clips, load_index

    entries = {e["name"]: e for e in load_index(cache)["clips"]}
    out = []
    for clip in load_clips(cache, split):
        if clip.name not in labels:
            raise ValueError(f"no labels for {clip.name}: run {labeller} on this cache again")
        z = zscore(labels[clip.name])
        if len(z) != len(clip.valid):
            raise ValueError(f"labels of {clip.name} have {len(z)} frames, the cache {len(clip.valid)}: "
                             f"run {labeller} on this cache again")
        opening = z if z.ndim == 1 else z[:, 0]
        finite = np.isfinite(z) if z.ndim == 1 else np.isfinite(z).all(axis=1)
        offset = 0
        if max_offset:
            offset = op.clip_offset(opening, clip_envelope(entries[clip.name], len(z)), max_offset)
        frames, label_frames = op.aligned_frames(finite & clip.valid, offset)
        out.append((clip.name, offset, op.mel_windows(clip)[frames], z[label_frames]))
    return out


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The command's arguments (shared by `lipsync-service train opening` and `python -m`)."""
    ap.add_argument("cache", type=Path, help="the prepared cache (`train prepare`)")
    ap.add_argument("labels", type=Path, help="mouth openings of the cache's frames (mouth_labels.py)")
    ap.add_argument("out", type=Path, help="output folder")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--base", type=Path, help="a trained warp generator checkpoint to fine-tune the renderer from")
    src.add_argument("--renderer", type=Path, help="reuse this trained opening renderer (renderer.pt)")
    ap.add_argument("--max-offset", type=int, default=2, help="audio-video offset searched per clip, frames")
    ap.add_argument("--members", type=int, default=4, help="MLPs in the speech ensemble")
    ap.add_argument("--mlp-steps", type=int, default=3000)
    ap.add_argument("--render-steps", type=int, default=5000)
    ap.add_argument("--render-seconds", type=float, default=480.0)
    ap.add_argument("--adv-seconds", type=float, default=0.0,
                    help="then sharpen the renderer with the adversarial loss for this long (the shipped model: 1200)")
    ap.add_argument("--adv-steps", type=int, default=10**9, help="or for this many steps, whichever ends first")
    ap.add_argument("--adv-weight", type=float, default=0.05, help="adversarial loss weight of the sharpening stage")
    ap.add_argument("--adv-lr", type=float, default=1e-4, help="renderer learning rate of the sharpening stage")
    ap.add_argument("--gain", type=float, default=3.0, help="served articulation gain on the predicted opening")


def run(args: argparse.Namespace) -> Path:
    """Train what is missing and export; returns the ONNX path."""
    import shutil

    import torch

    from lipsync_models.training import opening as op
    from lipsync_models.training.data import load_clips
    from lipsync_models.training.export import load_generator
    from lipsync_models.training.opening_render import finetune

    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    labels = op.load_labels(args.labels)
    train = gather(args.cache, labels, "train", args.max_offset)
    for name, offset, _, _ in train:
        print(f"offset {name} {offset:+d}")
    x = np.concatenate([t[2] for t in train])
    y = np.concatenate([t[3] for t in train])
    hidden, dropout = 128, 0.3
    net = op.train_opening_net(x, y, steps=args.mlp_steps, hidden=hidden, dropout=dropout, members=args.members)
    op.save_opening(net, args.out / "opening_net.pt", hidden, dropout)
    print(f"mlp train r {op.pearson(op.predict(net, x), y):.3f}")
    for name, _, xv, yv in gather(args.cache, labels, "val"):
        print(f"mlp held-out r {name} {op.pearson(op.predict(net, xv), yv):.3f}")
    renderer = args.out / "renderer.pt"
    if args.renderer is not None:
        if args.renderer.resolve() != renderer.resolve():
            shutil.copyfile(args.renderer, renderer)
    else:
        finetune(load_generator(args.base), load_clips(args.cache, "train"), labels, renderer,
                 steps=args.render_steps, max_seconds=args.render_seconds)
    if args.adv_seconds > 0:
        # L1 alone leaves the mouth blurred; a patch critic on the lower half puts the detail back.
        finetune(load_generator(renderer), load_clips(args.cache, "train"), labels, renderer, steps=args.adv_steps,
                 max_seconds=args.adv_seconds, adv_weight=args.adv_weight, lr=args.adv_lr)
    out = op.export_served(renderer, args.out / "opening_net.pt", args.out / "model.onnx", gain=args.gain)
    print(f"wrote {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line entry (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__)
    add_arguments(ap)
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
