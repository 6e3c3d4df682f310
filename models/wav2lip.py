"""Wav2Lip-compatible networks: the generator, the SyncNet expert and the visual-quality discriminator.

The module trees reproduce the public Wav2Lip checkpoint layout (docs/models-contract.md#wav2lip-layout) so that a
user's own checkpoint file loads with strict key and shape checks. Written from the published layout; no code or
weights of the original project are included.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ConvBlock(nn.Module):
    """Conv2d(bias) -> BatchNorm2d -> (+ input) -> ReLU, stored as `conv_block.0/1` like the checkpoints."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int],
        padding: int | tuple[int, int],
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class UpBlock(nn.Module):
    """ConvTranspose2d(bias) -> BatchNorm2d -> ReLU, stored as `conv_block.0/1`."""

    def __init__(
        self, cin: int, cout: int, kernel_size: int, stride: int, padding: int, output_padding: int = 0
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


class PlainConvBlock(nn.Module):
    """Conv2d(bias) -> LeakyReLU without normalisation, as in the quality discriminator."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int | tuple[int, int],
        padding: int,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding))
        self.act = nn.LeakyReLU(0.01, inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


def _res(channels: int) -> ConvBlock:
    return ConvBlock(channels, channels, 3, 1, 1, residual=True)


def _audio_encoder() -> nn.Sequential:
    """The 13-block mel encoder shared by the generator and SyncNet layouts (80x16 -> 512x1x1)."""
    return nn.Sequential(
        ConvBlock(1, 32, 3, 1, 1),
        _res(32),
        _res(32),
        ConvBlock(32, 64, 3, (3, 1), 1),
        _res(64),
        _res(64),
        ConvBlock(64, 128, 3, 3, 1),
        _res(128),
        _res(128),
        ConvBlock(128, 256, 3, (3, 2), 1),
        _res(256),
        ConvBlock(256, 512, 3, 1, 0),
        ConvBlock(512, 512, 1, 1, 0),
    )


class Wav2Lip(nn.Module):
    """Generator with the public Wav2Lip / Wav2Lip-GAN layout: face [B,6,96,96] + mel [B,1,80,16] -> [B,3,96,96]."""

    face_size = 96

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList(
            [
                nn.Sequential(ConvBlock(6, 16, 7, 1, 3)),
                nn.Sequential(ConvBlock(16, 32, 3, 2, 1), _res(32), _res(32)),
                nn.Sequential(ConvBlock(32, 64, 3, 2, 1), _res(64), _res(64), _res(64)),
                nn.Sequential(ConvBlock(64, 128, 3, 2, 1), _res(128), _res(128)),
                nn.Sequential(ConvBlock(128, 256, 3, 2, 1), _res(256), _res(256)),
                nn.Sequential(ConvBlock(256, 512, 3, 2, 1), _res(512)),
                nn.Sequential(ConvBlock(512, 512, 3, 1, 0), ConvBlock(512, 512, 1, 1, 0)),
            ]
        )
        self.audio_encoder = _audio_encoder()
        self.face_decoder_blocks = nn.ModuleList(
            [
                nn.Sequential(ConvBlock(512, 512, 1, 1, 0)),
                nn.Sequential(UpBlock(1024, 512, 3, 1, 0), _res(512)),
                nn.Sequential(UpBlock(1024, 512, 3, 2, 1, 1), _res(512), _res(512)),
                nn.Sequential(UpBlock(768, 384, 3, 2, 1, 1), _res(384), _res(384)),
                nn.Sequential(UpBlock(512, 256, 3, 2, 1, 1), _res(256), _res(256)),
                nn.Sequential(UpBlock(320, 128, 3, 2, 1, 1), _res(128), _res(128)),
                nn.Sequential(UpBlock(160, 64, 3, 2, 1, 1), _res(64), _res(64)),
            ]
        )
        self.output_block = nn.Sequential(ConvBlock(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())

    def forward(self, face: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """Re-draw the face crops for the mel windows.

        Args:
            face: [B, 6, 96, 96] in [0, 1] (masked target, reference).
            mel: [B, 1, 80, 16].

        Returns:
            [B, 3, 96, 96] in [0, 1].
        """
        skips = []
        x = face
        for block in self.face_encoder_blocks:
            x = block(x)
            skips.append(x)
        x = self.audio_encoder(mel)
        # Decoder output first, then the encoder map of the same size, deepest first.
        for block, skip in zip(self.face_decoder_blocks, reversed(skips)):
            x = torch.cat((block(x), skip), dim=1)
        return self.output_block(x)


class SyncNet(nn.Module):
    """SyncNet expert layout: 5 lower halves [B,15,48,96] and mel [B,1,80,16] -> two unit 512-d embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder = nn.Sequential(
            ConvBlock(15, 32, 7, 1, 3),
            ConvBlock(32, 64, 5, (1, 2), 1),
            _res(64),
            _res(64),
            ConvBlock(64, 128, 3, 2, 1),
            _res(128),
            _res(128),
            _res(128),
            ConvBlock(128, 256, 3, 2, 1),
            _res(256),
            _res(256),
            ConvBlock(256, 512, 3, 2, 1),
            _res(512),
            _res(512),
            ConvBlock(512, 512, 3, 2, 1),
            ConvBlock(512, 512, 3, 1, 0),
            ConvBlock(512, 512, 1, 1, 0),
        )
        self.audio_encoder = nn.Sequential(
            ConvBlock(1, 32, 3, 1, 1),
            _res(32),
            _res(32),
            ConvBlock(32, 64, 3, (3, 1), 1),
            _res(64),
            _res(64),
            ConvBlock(64, 128, 3, 3, 1),
            _res(128),
            _res(128),
            ConvBlock(128, 256, 3, (3, 2), 1),
            _res(256),
            _res(256),
            ConvBlock(256, 512, 3, 1, 0),
            ConvBlock(512, 512, 1, 1, 0),
        )

    def forward(self, mel: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed a mel window and a 5-frame lower-face stack.

        Args:
            mel: [B, 1, 80, 16].
            faces: [B, 15, 48, 96] (5 BGR lower halves stacked on channels).

        Returns:
            (audio_embedding, face_embedding), each [B, 512] with unit L2 norm.
        """
        audio = self.audio_encoder(mel).flatten(1)
        face = self.face_encoder(faces).flatten(1)
        return F.normalize(audio, p=2, dim=1), F.normalize(face, p=2, dim=1)


def sync_probability(audio_emb: torch.Tensor, face_emb: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of unit embeddings, clamped into (0, 1) for a BCE sync loss."""
    return F.cosine_similarity(audio_emb, face_emb).clamp(1e-6, 1.0 - 1e-6)


class QualityDiscriminator(nn.Module):
    """Visual-quality discriminator (Wav2Lip-GAN layout): probability that a face's lower half is real."""

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList(
            [
                nn.Sequential(PlainConvBlock(3, 32, 7, 1, 3)),
                nn.Sequential(PlainConvBlock(32, 64, 5, (1, 2), 2), PlainConvBlock(64, 64, 5, 1, 2)),
                nn.Sequential(PlainConvBlock(64, 128, 5, 2, 2), PlainConvBlock(128, 128, 5, 1, 2)),
                nn.Sequential(PlainConvBlock(128, 256, 5, 2, 2), PlainConvBlock(256, 256, 5, 1, 2)),
                nn.Sequential(PlainConvBlock(256, 512, 3, 2, 1), PlainConvBlock(512, 512, 3, 1, 1)),
                nn.Sequential(PlainConvBlock(512, 512, 3, 2, 1), PlainConvBlock(512, 512, 3, 1, 1)),
                nn.Sequential(PlainConvBlock(512, 512, 3, 1, 0), PlainConvBlock(512, 512, 1, 1, 0)),
            ]
        )
        self.binary_pred = nn.Sequential(nn.Conv2d(512, 1, 1, 1, 0), nn.Sigmoid())

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """Score faces.

        Args:
            faces: [B, 3, 96, 96] in [0, 1]; only the lower half is looked at.

        Returns:
            [B, 1] probabilities of "real".
        """
        x = faces[:, :, faces.shape[2] // 2 :]
        for block in self.face_encoder_blocks:
            x = block(x)
        return self.binary_pred(x).flatten(1)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
