"""Fine-tune the warp renderer on the explicit opening: code = the target frame's per-clip z-scored opening.

Teacher forcing: at training the renderer gets the TRUE opening of the target frame (Face Mesh labels from
mouth_labels.py); at serving it gets the speech MLP's prediction (opening.build_served). Starts from a trained
warp generator (all weights but the first code layer, which now takes 1 number instead of code_dim).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from lipsync_models.training.data import Clip
from lipsync_models.training.opening import zscore_labels


def sample(rng: np.random.Generator, clips: list[Clip], z: list[np.ndarray], batch: int, max_gap: int = 25,
           min_gap: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Target crops, reference crops (same clip, min_gap..max_gap frames away) and target z openings."""
    sizes = np.array([np.isfinite(zz).sum() for zz in z], np.float64)
    targets, refs, codes = [], [], []
    for _ in range(batch):
        c = int(rng.choice(len(clips), p=sizes / sizes.sum()))
        ok = np.flatnonzero(np.isfinite(z[c]) & clips[c].valid)
        i = int(ok[rng.integers(len(ok))])
        gap = np.abs(ok - i)
        pool = ok[(gap >= min_gap) & (gap <= max_gap)]
        r = int(pool[rng.integers(len(pool))]) if len(pool) else i
        targets.append(clips[c].faces[i])
        refs.append(clips[c].faces[r])
        codes.append(z[c][i])
    return np.stack(targets), np.stack(refs), np.array(codes, np.float32)


def finetune(base, clips: list[Clip], labels: dict[str, np.ndarray], out: Path, steps: int, batch: int = 16,
             lr: float = 3e-4, mouth_weight: float = 6.0, seed: int = 0, max_seconds: float = 1e9,
             adv_weight: float = 0.0, disc_width: int = 32):
    """Train a 1-number-code renderer initialised from `base` (a WarpGenerator). Saves out every 100 steps.

    Args:
        adv_weight: weight of a non-saturating adversarial loss from the patch discriminator on the lower
            half (0: L1 only, as the shipped renderer was trained); it pushes against L1's blur.

    Returns:
        the renderer (eval mode).
    """
    import torch
    from torch.nn import functional as F

    from lipsync_models.training.trainer import _mouth_weights
    from lipsync_models.training.warpnet import build_warp_generator

    cfg = dataclasses.replace(base.config, code_dim=1)
    gen = build_warp_generator(cfg)
    own = gen.state_dict()
    for k, v in base.state_dict().items():
        if k in own and own[k].shape == v.shape:
            own[k] = v
    gen.load_state_dict(own)
    z = [zscore_labels(labels[c.name]) for c in clips]
    weights = torch.from_numpy(_mouth_weights(cfg.face_size, mouth_weight)).float()
    opt = torch.optim.Adam([p for n, p in gen.named_parameters() if not n.startswith("audio.")], lr=lr)
    disc = disc_opt = None
    if adv_weight > 0:
        from lipsync_models.training.discriminator import build_discriminator

        disc = build_discriminator(disc_width)
        disc_opt = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    rng = np.random.default_rng(seed)
    s = cfg.face_size
    start = time.time()
    for step in range(1, steps + 1):
        t, r, code = sample(rng, clips, z, batch)
        t = torch.from_numpy(t).permute(0, 3, 1, 2).float() / 255.0
        r = torch.from_numpy(r).permute(0, 3, 1, 2).float() / 255.0
        masked = t.clone()
        masked[:, :, s // 2:] = 0
        pred = gen.render(torch.cat((masked, r), 1), torch.from_numpy(code)[:, None].clamp(-3, 3))
        loss = l1 = ((pred - t).abs() * weights).mean()
        if disc is not None:
            loss = l1 + adv_weight * F.softplus(-disc(pred[:, :, s // 2:])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if disc is not None:
            d_loss = (F.softplus(-disc(t[:, :, s // 2:])).mean()
                      + F.softplus(disc(pred[:, :, s // 2:].detach())).mean())
            disc_opt.zero_grad()
            d_loss.backward()
            disc_opt.step()
        if step % 50 == 0:
            print(f"step {step} l1 {l1.item():.4f} {time.time() - start:.0f}s", flush=True)
        if step % 100 == 0 or step == steps or time.time() - start > max_seconds:
            torch.save({"kind": "warp_generator", "config": dataclasses.asdict(cfg), "state_dict": gen.state_dict()},
                       out)
            if time.time() - start > max_seconds:
                break
    return gen.eval()
