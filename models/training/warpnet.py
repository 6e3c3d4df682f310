"""The default generator: warps the reference face and paints the mouth, conditioned on the speech.

Design (chosen to learn from minutes of video on a CPU): the speech is reduced to a small "mouth
code" (a few numbers: how open, how wide). The renderer works at half resolution, predicts from the
masked target, the reference and the code a flow field, a colour layer and a blend weight for the
lower half of the crop, warps the full-resolution reference face with the upsampled flow and blends
in the painted colour. It keeps the reference's skin, texture and lighting for free and only has to
learn how the mouth moves. In training a mouth encoder that sees the true lower face supplies the
code (a bottleneck the renderer cannot ignore) and the audio encoder learns to predict it; served,
the code comes from the audio alone.
Serving contract as docs/models-contract.md#generator-contract: face [B, 6, S, S] in [0, 1], mel [B, 1, 80, 16], output
[B, 3, S, S] in [0, 1]; the upper half of the output is the target's own upper half.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class WarpGeneratorConfig:
    """Hyper-parameters of WarpGenerator.

    Attributes:
        face_size: S of the serving contract (96..256, divisible by 16).
        width: channels of the first encoder stage (later stages 2x, 4x).
        audio_dim: size of the code's embedding inside the renderer.
        max_flow: largest displacement, as a fraction of the crop side.
        code_dim: size of the mouth code.
        code_gain: served code = gain x predicted code. A regressor shrinks its predictions towards the
            mean; the gain, measured on held-out clips after training (std of the true codes over std of
            the predicted ones), restores the natural range of mouth movement. 1 in training.
    """

    face_size: int = 96
    width: int = 32
    audio_dim: int = 64
    max_flow: float = 0.08
    code_dim: int = 4
    code_gain: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for checkpoints."""
        return asdict(self)


def build_warp_generator(config: WarpGeneratorConfig):
    """Create a WarpGenerator (imports torch lazily).

    Args:
        config: the hyper-parameters.

    Returns:
        torch.nn.Module with forward(face, mel) -> output.

    Raises:
        ValueError: face_size not in 96..256 or not divisible by 16.
    """
    if not 96 <= config.face_size <= 256 or config.face_size % 16:
        raise ValueError(f"face_size must be 96..256 and divisible by 16, got {config.face_size}")
    import torch
    from torch import nn
    from torch.nn import functional as F

    def conv(cin: int, cout: int, stride: int | tuple[int, int] = 1) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.2, inplace=True))

    class AudioEncoder(nn.Module):
        """[B, 1, 80, 16] log-mel window -> [B, dim] mouth code."""

        def __init__(self, dim: int) -> None:
            super().__init__()
            self.net = nn.Sequential(
                conv(1, 32, (2, 1)),  # 40x16
                conv(32, 32),
                conv(32, 64, 2),  # 20x8
                conv(64, 64),
                conv(64, 96, 2),  # 10x4
                conv(96, 128, 2),  # 5x2
            )
            self.fc = nn.Sequential(nn.Flatten(), nn.Linear(128 * 5 * 2, 256), nn.LeakyReLU(0.2, inplace=True),
                                    nn.Linear(256, dim))

        def forward(self, mel):
            return self.fc(self.net(mel))

    class WarpGenerator(nn.Module):
        """See the module docstring."""

        def __init__(self, cfg: WarpGeneratorConfig) -> None:
            super().__init__()
            self.config = cfg
            w = cfg.width
            self.audio = AudioEncoder(cfg.code_dim)
            self.code_embed = nn.Sequential(nn.Linear(cfg.code_dim, cfg.audio_dim), nn.LeakyReLU(0.2, inplace=True),
                                            nn.Linear(cfg.audio_dim, cfg.audio_dim))
            self.enc1 = nn.Sequential(conv(6, w), conv(w, w))  # S/2
            self.enc2 = nn.Sequential(conv(w, 2 * w, 2), conv(2 * w, 2 * w))  # S/4
            self.enc3 = nn.Sequential(conv(2 * w, 4 * w, 2), conv(4 * w, 4 * w))  # S/8
            self.enc4 = nn.Sequential(conv(4 * w, 4 * w, 2), conv(4 * w, 4 * w))  # S/16
            # FiLM: the speech scales and shifts the features at the two coarsest scales.
            self.film4 = nn.Linear(cfg.audio_dim, 2 * 4 * w)
            self.film3 = nn.Linear(cfg.audio_dim, 2 * 4 * w)
            self.mid = nn.Sequential(conv(4 * w + cfg.audio_dim, 4 * w), conv(4 * w, 4 * w))
            # The code also enters every decoder scale directly, so the head is a few layers from it.
            k = cfg.audio_dim // 4
            self.code_maps = nn.Linear(cfg.audio_dim, 3 * k)
            self.dec3 = nn.Sequential(conv(8 * w + k, 4 * w), conv(4 * w, 2 * w))
            self.dec2 = nn.Sequential(conv(4 * w + k, 2 * w), conv(2 * w, w))
            self.dec1 = nn.Sequential(conv(2 * w + k, w), conv(w, w))
            for mod in self.modules():
                if isinstance(mod, (nn.Conv2d, nn.Linear)):
                    # He init for LeakyReLU keeps activations from shrinking layer after layer (the default
                    # init halves them per layer, which starves the deep speech path of gradient).
                    nn.init.kaiming_normal_(mod.weight, a=0.2)
                    nn.init.zeros_(mod.bias)
            for small in (self.film3, self.film4, self.audio.fc[-1]):
                # Start the speech code near 0 (tanh unsaturated) and the modulation gentle.
                small.weight.data.mul_(0.05)
            # 2 flow, 3 colour, 1 blend weight.
            self.head = nn.Conv2d(w, 6, 3, 1, 1)
            nn.init.zeros_(self.head.weight)
            with torch.no_grad():
                self.head.bias.zero_()
                self.head.bias[5] = -3.0  # start by copying the warped reference, little painting
            s = cfg.face_size
            ys = (torch.arange(s, dtype=torch.float32) + 0.5) / s * 2 - 1
            gy, gx = torch.meshgrid(ys, ys, indexing="ij")
            self.register_buffer("base_grid", torch.stack((gx, gy), dim=-1)[None], persistent=False)
            lower = torch.zeros(1, 1, s, 1)
            lower[:, :, s // 2:] = 1.0
            self.register_buffer("lower", lower, persistent=False)

        @staticmethod
        def _film(x, params):
            gamma, beta = params.chunk(2, dim=1)
            return x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]

        def audio_code(self, mel):
            """[B, 1, 80, 16] -> [B, code_dim] predicted mouth code.

            Linear output (no squashing): a saturated tanh here stopped the regression's gradient in
            early experiments. The mouth encoder's codes are whitened (mean 0, variance 1).
            """
            return self.audio(mel)

        def forward(self, face, mel):
            # Served: keep the code inside the range the renderer was trained on.
            return self.render(face, (self.audio_code(mel) * self.config.code_gain).clamp(-3.0, 3.0))

        def render(self, face, code):
            """Draw the lower half for a given mouth code [B, code_dim]."""
            target = face[:, :3]
            ref = face[:, 3:]
            a = self.code_embed(code)
            x = F.avg_pool2d(face, 2)
            e1 = self.enc1(x)
            e2 = self.enc2(e1)
            e3 = self._film(self.enc3(e2), self.film3(a))
            e4 = self._film(self.enc4(e3), self.film4(a))
            ab = a[:, :, None, None].expand(-1, -1, e4.shape[2], e4.shape[3])
            m = self.mid(torch.cat((e4, ab), 1))
            c3, c2, c1 = self.code_maps(a)[:, :, None, None].chunk(3, dim=1)

            def up(x, skip, cmap):
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
                return torch.cat((x, skip, cmap.expand(-1, -1, x.shape[2], x.shape[3])), 1)

            d3 = self.dec3(up(m, e3, c3))
            d2 = self.dec2(up(d3, e2, c2))
            d1 = self.dec1(up(d2, e1, c1))
            h = F.interpolate(self.head(d1), scale_factor=2.0, mode="bilinear", align_corners=False)
            flow = torch.tanh(h[:, :2]) * (2 * self.config.max_flow)
            colour = torch.sigmoid(h[:, 2:5])
            alpha = torch.sigmoid(h[:, 5:6])
            grid = self.base_grid + flow.permute(0, 2, 3, 1)
            warped = F.grid_sample(ref, grid, mode="bilinear", padding_mode="border", align_corners=False)
            gen = warped * (1 - alpha) + colour * alpha
            out = target * (1 - self.lower) + gen * self.lower
            return out.clamp(0.0, 1.0)

    return WarpGenerator(config)


def build_mouth_encoder(config: WarpGeneratorConfig):
    """The training-only encoder: true lower half of the face [B, 3, S/2, S] -> whitened mouth code.

    The code ends in a BatchNorm without affine parameters: each component has mean 0 and variance 1
    over the batch, so it can neither collapse to a constant nor saturate (both happened with a tanh).

    Args:
        config: the generator's config (code_dim, face_size).

    Returns:
        torch.nn.Module.
    """
    from torch import nn

    def conv(cin: int, cout: int, stride: int = 1) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.2, inplace=True))

    # Keeps a coarse spatial layout (3 x 6 cells) to the end: the mouth's opening is a vertical
    # distance, which a global average would blur away.
    net = nn.Sequential(
        conv(3, 16, 2), conv(16, 32, 2), conv(32, 64, 2), conv(64, 64, 2),
        nn.AdaptiveAvgPool2d((3, 6)), nn.Flatten(), nn.Linear(64 * 18, config.code_dim),
        nn.BatchNorm1d(config.code_dim, affine=False),
    )
    for mod in net.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(mod.weight, a=0.2)
            nn.init.zeros_(mod.bias)
    return net


def count_parameters(module) -> int:
    """Number of trainable parameters of a torch module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
