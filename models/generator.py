"""Our own lip-sync generator: CNN face encoder, GRU audio encoder over mel sub-windows, skip-connected decoder.

Same serving contract as the Wav2Lip checkpoints (docs/models-contract.md#generator-contract): face [B,6,S,S] in [0,1]
(masked target, reference), mel [B,1,80,16], output [B,3,S,S] through a sigmoid. Temporal context comes from the
16-step mel window itself: it is cut into overlapping sub-windows which a GRU reads in order, so the serving contract
stays a single [B,1,80,16] window. Only ops ONNX opset 17 and TensorRT support (Conv, BatchNorm, ReLU, Resize, GRU,
Gemm, Concat, Mul/Add) are used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

SUPPORTED_FACE_SIZES = (96, 128, 192, 256)
MEL_BINS = 80
MEL_STEPS = 16


@dataclass
class GeneratorConfig:
    """Shape of the generator; everything the constructor needs, saved inside checkpoints.

    Attributes:
        face_size: S, the side of the square face crop (96, 128, 192 or 256).
        channels: face-encoder widths, one per resolution level; the first level keeps full resolution,
            each further level halves it. The decoder mirrors them.
        audio_channels: widths of the per-sub-window mel CNN.
        audio_dim: size of each sub-window's feature vector fed to the GRU.
        gru_hidden: GRU hidden size (the audio embedding).
        mel_window: mel steps per sub-window.
        mel_stride: mel steps between sub-window starts.
        architecture: identifies the network family in checkpoints and model metadata.
    """

    face_size: int = 96
    channels: tuple[int, ...] = (16, 32, 48, 64, 96, 128)
    audio_channels: tuple[int, ...] = (32, 64, 128)
    audio_dim: int = 128
    gru_hidden: int = 128
    mel_window: int = 8
    mel_stride: int = 4
    architecture: str = field(default="lipsync-gru-unet-v1")

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.audio_channels = tuple(int(c) for c in self.audio_channels)
        if self.face_size not in SUPPORTED_FACE_SIZES:
            raise ValueError(f"face_size must be one of {SUPPORTED_FACE_SIZES}, got {self.face_size}")
        if self.face_size % (2 ** (len(self.channels) - 1)) != 0:
            raise ValueError(
                f"face_size {self.face_size} is not divisible by 2^{len(self.channels) - 1}; "
                "use fewer channel levels"
            )
        if not 1 <= self.mel_window <= MEL_STEPS or self.mel_stride < 1:
            raise ValueError("mel_window must be in 1..16 and mel_stride >= 1")

    @property
    def num_subwindows(self) -> int:
        """How many mel sub-windows the GRU reads."""
        return (MEL_STEPS - self.mel_window) // self.mel_stride + 1

    @classmethod
    def for_face_size(cls, face_size: int, **overrides: Any) -> GeneratorConfig:
        """Default widths for a face size: one more level for the larger sizes (bottleneck 3x3 or 4x4)."""
        levels = {96: 6, 128: 6, 192: 7, 256: 7}[face_size]
        widths = (16, 32, 48, 64, 96, 128, 128)[:levels]
        base: dict[str, Any] = {"face_size": face_size, "channels": widths}
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form stored in checkpoints."""
        data = asdict(self)
        data["channels"] = list(self.channels)
        data["audio_channels"] = list(self.audio_channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorConfig:
        """Inverse of to_dict; unknown keys are refused so a typo does not pass silently."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown generator config keys: {sorted(unknown)}")
        return cls(**data)


class ConvBNReLU(nn.Sequential):
    """Conv2d -> BatchNorm2d -> ReLU (BN folds into the conv at export)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int | tuple[int, int] = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with an identity shortcut."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class AudioEncoder(nn.Module):
    """Mel [B,1,80,16] -> overlapping sub-windows -> shared CNN -> GRU over time -> [B, gru_hidden]."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.window = config.mel_window
        self.stride = config.mel_stride
        self.steps = config.num_subwindows
        layers: list[nn.Module] = []
        cin = 1
        for width in config.audio_channels:
            # Frequency is reduced faster than time: 80 bins carry most of the redundancy.
            layers += [ConvBNReLU(cin, width, 3, (2, 1)), ConvBNReLU(width, width, 3, (2, 1))]
            cin = width
        self.cnn = nn.Sequential(*layers)
        freq = MEL_BINS
        for _ in range(2 * len(config.audio_channels)):
            freq = (freq - 1) // 2 + 1
        self.project = nn.Linear(cin * freq * config.mel_window, config.audio_dim)
        self.gru = nn.GRU(config.audio_dim, config.gru_hidden, num_layers=1, batch_first=False)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        batch = mel.shape[0]
        # Static slices (the window count is fixed) export as plain Slice + Concat.
        parts = [mel[:, :, :, i * self.stride : i * self.stride + self.window] for i in range(self.steps)]
        windows = torch.cat(parts, dim=0)  # [T*B, 1, 80, w], time-major
        feats = self.cnn(windows).flatten(1)
        feats = F.relu(self.project(feats)).reshape(self.steps, batch, -1)
        _, hidden = self.gru(feats)
        return hidden[-1]


class FiLM(nn.Module):
    """Scale and shift of a feature map from the audio embedding: the mouth is driven at every decoder level."""

    def __init__(self, embed_dim: int, channels: int) -> None:
        super().__init__()
        self.to_scale_shift = nn.Linear(embed_dim, 2 * channels)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        scale, shift = self.to_scale_shift(embedding).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return x * (1 + scale) + shift


class LipsyncGenerator(nn.Module):
    """Our generator: U-Net over the 6-channel face input, conditioned on the GRU audio embedding."""

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.config = config or GeneratorConfig()
        chans = self.config.channels
        self.face_size = self.config.face_size
        self.encoder = nn.ModuleList()
        cin = 6
        for level, width in enumerate(chans):
            stride = 1 if level == 0 else 2
            kernel = 7 if level == 0 else 3
            self.encoder.append(nn.Sequential(ConvBNReLU(cin, width, kernel, stride), ResidualBlock(width)))
            cin = width
        self.audio = AudioEncoder(self.config)
        hidden = self.config.gru_hidden
        deepest = chans[-1]
        self.bottleneck_film = FiLM(hidden, deepest)
        self.audio_to_map = nn.Linear(hidden, deepest)
        self.bottleneck = nn.Sequential(ConvBNReLU(2 * deepest, deepest, 3), ResidualBlock(deepest))
        self.decoder = nn.ModuleList()
        self.films = nn.ModuleList()
        cur = deepest
        for width in reversed(chans[:-1]):
            # Upsample, then fuse with the encoder map of the same size.
            self.decoder.append(nn.Sequential(ConvBNReLU(cur + width, width, 3), ResidualBlock(width)))
            self.films.append(FiLM(hidden, width))
            cur = width
        self.head = nn.Conv2d(cur, 3, 1)

    def forward(self, face: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """Re-draw the face crops for the mel windows.

        Args:
            face: [B, 6, S, S] in [0, 1]: target with lower half zeroed, then the reference.
            mel: [B, 1, 80, 16].

        Returns:
            [B, 3, S, S] in [0, 1].
        """
        skips = []
        x = face
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        audio = self.audio(mel)
        x = self.bottleneck_film(x, audio)
        audio_map = self.audio_to_map(audio).unsqueeze(-1).unsqueeze(-1)
        x = self.bottleneck(torch.cat((x, audio_map.expand_as(x)), dim=1))
        for block, film, skip in zip(self.decoder, self.films, reversed(skips[:-1])):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = film(block(torch.cat((x, skip), dim=1)), audio)
        return torch.sigmoid(self.head(x))


def build_generator(config: GeneratorConfig | None = None, seed: int = 0) -> LipsyncGenerator:
    """A generator with a deterministic initialisation (same seed -> same weights on every machine).

    Args:
        config: the shape; defaults to GeneratorConfig().
        seed: RNG seed for the initial weights.

    Returns:
        The module in eval mode.
    """
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LipsyncGenerator(config)
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


def save_generator(model: LipsyncGenerator, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write a checkpoint: {"config": ..., "state_dict": ..., **extra}."""
    payload: dict[str, Any] = {"config": model.config.to_dict(), "state_dict": model.state_dict()}
    payload.update(extra or {})
    torch.save(payload, str(path))


def load_generator(path: str | Path) -> LipsyncGenerator:
    """Load a checkpoint written by save_generator (or by training, with the same two keys).

    Args:
        path: the checkpoint file.

    Returns:
        The module in eval mode.

    Raises:
        ValueError: the file has no generator config or its tensors do not fit it.
    """
    payload = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or "config" not in payload or "state_dict" not in payload:
        raise ValueError(f"{path} is not a lipsync generator checkpoint (needs 'config' and 'state_dict')")
    model = LipsyncGenerator(GeneratorConfig.from_dict(dict(payload["config"])))
    model.load_state_dict(payload["state_dict"], strict=True)
    return model.eval()
