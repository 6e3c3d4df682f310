"""Visual-quality discriminator: a small patch critic on the lower half of face crops."""

from __future__ import annotations


def build_discriminator(width: int = 32):
    """Create the patch discriminator (imports torch lazily).

    Args:
        width: channels of the first stage.

    Returns:
        torch.nn.Module mapping lower halves [B, 3, S/2, S] in [0, 1] to patch logits [B, 1, h, w].
    """
    from torch import nn

    def down(cin: int, cout: int) -> list:
        return [nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]

    w = width
    return nn.Sequential(*down(3, w), *down(w, 2 * w), *down(2 * w, 4 * w), nn.Conv2d(4 * w, 1, 3, 1, 1))
