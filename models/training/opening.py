"""Explicit mouth opening: speech -> per-clip-normalised opening (MLP), opening -> the renderer's mouth code.

The audio model regresses the Face Mesh opening of each training frame, z-scored per clip so identity cannot
be learned (SPEC section 7). The bridge maps that scalar onto the trained renderer's mouth code by least
squares over training frames (codes and openings both centred per clip). The served graph is
render(face, clamp(mean_code + gain * z_pred * direction)).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lipsync_models.training.data import Clip


def zscore_labels(openings: np.ndarray) -> np.ndarray:
    """Per-clip z-score of a clip's openings (NaN where no face stays NaN)."""
    ok = np.isfinite(openings)
    out = np.full_like(openings, np.nan, dtype=np.float32)
    if ok.sum() > 1:
        out[ok] = (openings[ok] - openings[ok].mean()) / max(float(openings[ok].std()), 1e-6)
    return out


def mel_windows(clip: Clip) -> np.ndarray:
    """[N, 80, 16] mel windows of every frame of a clip."""
    return np.stack([clip.mel_window(i) for i in range(len(clip.window_starts))]).astype(np.float32)


def build_opening_net(hidden: int = 128):
    """One-hidden-layer MLP: [B, 1, 80, 16] log-mel -> [B] normalised opening."""
    from torch import nn

    class OpeningNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(80 * 16, hidden), nn.ReLU(), nn.Linear(hidden, 1))

        def forward(self, mel):
            # Per-window mean removed: loudness offsets between recordings say nothing about the mouth.
            mel = mel - mel.mean(dim=(2, 3), keepdim=True)
            return self.net(mel)[:, 0]

    return OpeningNet()


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two 1-D series."""
    return float(np.corrcoef(a, b)[0, 1])


def train_opening_net(x: np.ndarray, y: np.ndarray, steps: int = 3000, batch: int = 256, lr: float = 1e-3,
                      weight_decay: float = 1e-3, seed: int = 0, hidden: int = 128):
    """Fit the MLP on windows x [N, 80, 16] and z-scored targets y [N] (MSE, Adam).

    Returns:
        the trained module (eval mode).
    """
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_opening_net(hidden)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    xt = torch.from_numpy(x[:, None])
    yt = torch.from_numpy(y.astype(np.float32))
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(x), batch))
        loss = torch.nn.functional.mse_loss(net(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def predict(net, x: np.ndarray) -> np.ndarray:
    """Predicted normalised openings for windows x [N, 80, 16]."""
    import torch

    with torch.no_grad():
        return net(torch.from_numpy(x[:, None])).numpy()


def build_served(generator, opening_net, mean_code: np.ndarray, direction: np.ndarray, gain: float):
    """The serving graph: face [B,6,S,S], mel [B,1,80,16] -> output [B,3,S,S]."""
    import torch
    from torch import nn

    class OpeningWarp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.generator = generator
            self.opening = opening_net
            self.register_buffer("mean_code", torch.tensor(mean_code, dtype=torch.float32)[None])
            self.register_buffer("direction", torch.tensor(direction * gain, dtype=torch.float32)[None])

        def forward(self, face, mel):
            z = self.opening(mel)[:, None]
            return self.generator.render(face, (self.mean_code + z * self.direction).clamp(-3.0, 3.0))

    return OpeningWarp().eval()


def load_labels(path: Path) -> dict[str, np.ndarray]:
    """Labels written by mouth_labels.py: clip name -> raw openings."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def export_served(renderer_path: Path, opening_path: Path, out: Path, gain: float = 1.0, hidden: int = 128) -> Path:
    """Write the serving ONNX: the speech MLP's opening drives the 1-number-code renderer.

    Args:
        renderer_path: renderer.pt written by opening_render.finetune (code_dim 1).
        opening_path: state dict of build_opening_net.
        out: the .onnx path.
        gain: served articulation gain on the predicted opening (the MLP's predictions are shrunk towards 0).
        hidden: the MLP's hidden size.

    Returns:
        out.
    """
    import torch

    from lipsync_models.export import export_onnx
    from lipsync_models.training.export import load_generator
    from lipsync_models.training.warpnet import count_parameters

    renderer = load_generator(renderer_path)
    if renderer.config.code_dim != 1:
        raise ValueError(f"{renderer_path} has a {renderer.config.code_dim}-number code; expected the 1-number "
                         "opening renderer of opening_render.finetune")
    net = build_opening_net(hidden)
    net.load_state_dict(torch.load(opening_path, map_location="cpu"))
    served = build_served(renderer, net.eval(), np.zeros(1, np.float32), np.ones(1, np.float32), gain)
    params = count_parameters(renderer) - count_parameters(renderer.audio) + count_parameters(net)
    description = (f"lipsync-opening-warp-s{renderer.config.face_size} ({params / 1e6:.2f} M params, speech MLP -> "
                   f"mouth opening -> warp renderer, opening gain {gain:.2f}, trained weights)")
    return export_onnx(served, out, renderer.config.face_size, description=description)
