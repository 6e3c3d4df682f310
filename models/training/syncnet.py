"""A small SyncNet-style expert: do these mouth frames and this speech window belong together?

It embeds the lower halves of T consecutive face crops and the log-mel window of the first frame
into unit vectors; their cosine similarity, scaled, is the logit of "in sync". Trained first on the
same clips (positives: aligned windows; negatives: the speech from another time of the same clip),
then frozen and used as a loss for the generator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SyncExpertConfig:
    """Hyper-parameters of the expert.

    Attributes:
        face_size: S of the crops (the expert sees rows S/2..S-1, pooled to half resolution).
        frames: T, consecutive frames per sample.
        width: channels of the first stage.
        embed_dim: size of the two embeddings.
    """

    face_size: int = 96
    frames: int = 5
    width: int = 32
    embed_dim: int = 128

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for checkpoints."""
        return asdict(self)


def build_sync_expert(config: SyncExpertConfig):
    """Create the expert (imports torch lazily).

    Args:
        config: the hyper-parameters.

    Returns:
        torch.nn.Module with forward(lower_faces [B, 3T, S/2, S], mel [B, 1, 80, 16]) -> logits [B].
    """
    import torch
    from torch import nn
    from torch.nn import functional as F

    def conv(cin: int, cout: int, stride: int | tuple[int, int] = 1) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    class SyncExpert(nn.Module):
        def __init__(self, cfg: SyncExpertConfig) -> None:
            super().__init__()
            self.config = cfg
            w = cfg.width
            self.face = nn.Sequential(
                conv(3 * cfg.frames, w), conv(w, 2 * w, 2), conv(2 * w, 2 * w),
                conv(2 * w, 4 * w, 2), conv(4 * w, 4 * w), conv(4 * w, 8 * w, 2), conv(8 * w, 8 * w, 2),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * w, cfg.embed_dim),
            )
            self.audio = nn.Sequential(
                conv(1, w, (2, 1)), conv(w, 2 * w, 2), conv(2 * w, 2 * w), conv(2 * w, 4 * w, 2),
                conv(4 * w, 8 * w, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * w, cfg.embed_dim),
            )
            self.scale = nn.Parameter(torch.tensor(5.0))
            self.bias = nn.Parameter(torch.tensor(0.0))

        def embed(self, lower_faces, mel):
            v = F.normalize(self.face(F.avg_pool2d(lower_faces, 2)), dim=1)
            a = F.normalize(self.audio(mel), dim=1)
            return v, a

        def forward(self, lower_faces, mel):
            v, a = self.embed(lower_faces, mel)
            return (v * a).sum(1) * self.scale + self.bias

    return SyncExpert(config)
