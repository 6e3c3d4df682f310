"""Batch augmentation on torch tensors: colour, scale, small shifts and horizontal flips."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random changes (0 disables one).

    Attributes:
        colour: per-channel gain and offset spread.
        scale: relative zoom spread.
        shift: translation spread, fraction of the crop side.
        ref_shift: extra translation of the reference alone (teaches the warp to align).
        flip: probability of a horizontal flip.
    """

    colour: float = 0.1
    scale: float = 0.05
    shift: float = 0.03
    ref_shift: float = 0.02
    flip: float = 0.5


def augment(target, reference, config: AugmentConfig, generator):
    """Apply the same colour change and flip to a sample's target and reference windows.

    The target window gets one zoom and shift (consistent over its T frames); the reference gets
    that plus a small shift of its own.

    Args:
        target: float [B, T, 3, S, S] in [0, 1].
        reference: float [B, T, 3, S, S] in [0, 1].
        config: ranges.
        generator: torch.Generator used for every draw (its state is checkpointed).

    Returns:
        (target, reference) augmented, same shapes, in [0, 1].
    """
    import torch
    from torch.nn import functional as F

    b, t, c, s, _ = target.shape

    def rand(*shape):
        return torch.rand(*shape, generator=generator) * 2 - 1

    gain = 1 + config.colour * rand(b, 1, 3, 1, 1)
    offset = config.colour * 0.5 * rand(b, 1, 1, 1, 1)
    zoom = 1 + config.scale * rand(b)
    shift = config.shift * 2 * rand(b, 2)
    ref_shift = shift + config.ref_shift * 2 * rand(b, 2)
    flip = torch.rand(b, generator=generator) < config.flip
    sign = torch.where(flip, -1.0, 1.0)

    def warp(x, move):
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = sign / zoom
        theta[:, 1, 1] = 1 / zoom
        theta[:, :, 2] = move
        grid = F.affine_grid(theta, (b, t * c, s, s), align_corners=False)
        return F.grid_sample(x.reshape(b, t * c, s, s), grid, padding_mode="border",
                             align_corners=False).reshape(b, t, c, s, s)

    target = (warp(target, shift) * gain + offset).clamp(0, 1)
    reference = (warp(reference, ref_shift) * gain + offset).clamp(0, 1)
    return target, reference
