"""Export trained generator weights to the serving ONNX contract (face, mel -> output)."""

from __future__ import annotations

from pathlib import Path

from lipsync_models.training.warpnet import WarpGeneratorConfig, build_warp_generator, count_parameters


def load_generator(weights: Path):
    """Rebuild the generator from trainer output: `generator.pt`, or a run's `checkpoint.pt` (mid-run).

    Raises:
        ValueError: the file is not trainer output.
    """
    import torch

    state = torch.load(Path(weights), map_location="cpu", weights_only=False)
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
    model = build_warp_generator(config)
    model.load_state_dict(weights_only)
    return model.eval()


def export_trained(weights: Path, out: Path) -> Path:
    """Write the ONNX file the service loads (and the Triton python backend serves).

    Args:
        weights: generator.pt.
        out: the .onnx path.

    Returns:
        out.
    """
    from lipsync_models.export import export_onnx

    model = load_generator(weights)
    cfg = model.config
    description = (f"lipsync-warp-s{cfg.face_size} ({count_parameters(model) / 1e6:.2f} M params, "
                   f"mouth-code warp generator, trained weights)")
    return export_onnx(model, out, cfg.face_size, description=description)
