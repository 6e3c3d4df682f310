"""Export trained generator weights to the serving ONNX contract (face, mel -> output)."""

from __future__ import annotations

from pathlib import Path

from lipsync_models.training.warpnet import WarpGeneratorConfig, build_warp_generator, count_parameters


def _load(weights: Path) -> dict:
    import torch

    return torch.load(Path(weights), map_location="cpu", weights_only=False)


def load_generator(weights: Path, code_gain: float | None = None):
    """Rebuild the generator from trainer output: `generator.pt`, or a run's `checkpoint.pt` (mid-run).

    Args:
        weights: the file.
        code_gain: replaces the config's code_gain when given.

    Raises:
        ValueError: the file is not trainer output.
    """
    import dataclasses

    state = _load(weights)
    if isinstance(state, dict) and "generator" in state and "config" in state and "step" in state:
        run = state["config"]
        config = WarpGeneratorConfig(run["face_size"], run["gen_width"], run["audio_dim"], run["max_flow"],
                                     run["code_dim"])
        weights_only = state["generator"]
    elif isinstance(state, dict) and state.get("kind") == "warp_generator":
        config = WarpGeneratorConfig(**state["config"])
        weights_only = state["state_dict"]
    else:
        raise ValueError(f"{weights} is not a generator or checkpoint file written by `lipsync-service train run`")
    if code_gain is not None:
        config = dataclasses.replace(config, code_gain=float(code_gain))
    model = build_warp_generator(config)
    model.load_state_dict(weights_only)
    return model.eval()


def measure_code_gain(checkpoint: Path, cache_dir: Path, windows: int = 256, seed: int = 0) -> dict[str, float]:
    """Calibrate code_gain on the held-out clips of the cache.

    Args:
        checkpoint: a run's checkpoint.pt (holds the mouth encoder as well as the generator).
        cache_dir: the prepared cache (its "val" split is used).
        windows: windows of T frames sampled.
        seed: sampling seed.

    Returns:
        {"code_gain": mean over components of std(true code) / std(predicted code),
         "code_r": mean Pearson r between predicted and true codes over components}.

    Raises:
        ValueError: not a checkpoint, or no validation clips.
    """
    import numpy as np
    import torch

    from lipsync_models.training.data import WindowSampler, load_clips
    from lipsync_models.training.warpnet import build_mouth_encoder

    state = _load(checkpoint)
    if not (isinstance(state, dict) and "mouth_encoder" in state):
        raise ValueError(f"{checkpoint} is not a training checkpoint (checkpoint.pt of a run)")
    model = load_generator(checkpoint)
    encoder = build_mouth_encoder(model.config)
    encoder.load_state_dict(state["mouth_encoder"])
    encoder.eval()
    clips = load_clips(Path(cache_dir), "val")
    if not clips:
        raise ValueError(f"no validation clips in {cache_dir}")
    batch = WindowSampler(clips, 1).sample(np.random.default_rng(seed), windows)
    s = model.config.face_size
    with torch.no_grad():
        faces = torch.from_numpy(batch.target[:, 0]).permute(0, 3, 1, 2).float() / 255.0
        true = encoder(faces[:, :, s // 2:]).numpy()
        pred = model.audio_code(torch.from_numpy(batch.mel[:, 0:1])).numpy()
    gains = true.std(0) / np.maximum(pred.std(0), 1e-6)
    rs = [float(np.corrcoef(true[:, k], pred[:, k])[0, 1]) for k in range(true.shape[1])]
    return {"code_gain": float(gains.mean()), "code_r": float(np.mean(rs))}


def export_trained(weights: Path, out: Path, code_gain: float | None = None) -> Path:
    """Write the ONNX file the service loads (and the Triton python backend serves).

    Args:
        weights: generator.pt or checkpoint.pt.
        out: the .onnx path.
        code_gain: served articulation gain (see WarpGeneratorConfig.code_gain); default the file's.

    Returns:
        out.
    """
    from lipsync_models.export import export_onnx

    model = load_generator(weights, code_gain)
    cfg = model.config
    description = (f"lipsync-warp-s{cfg.face_size} ({count_parameters(model) / 1e6:.2f} M params, "
                   f"mouth-code warp generator, code gain {cfg.code_gain:.2f}, trained weights)")
    return export_onnx(model, out, cfg.face_size, description=description)
