"""Importing public-layout Wav2Lip checkpoints: formats accepted, mismatches refused with the tensor lists."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from lipsync_models.checkpoint import CheckpointMismatch, import_wav2lip  # noqa: E402
from lipsync_models.wav2lip import QualityDiscriminator, SyncNet, Wav2Lip, count_parameters  # noqa: E402
from lipsync_service.errors import InvalidInput  # noqa: E402


def public_layout_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the public checkpoint's key names and shapes (never real weights)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in Wav2Lip().state_dict().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7)
        elif name.endswith("running_var"):
            state[name] = torch.rand(tensor.shape, generator=gen) + 0.5
        else:
            state[name] = torch.randn(tensor.shape, generator=gen) * 0.05
    return state


def test_generator_has_the_public_layout() -> None:
    model = Wav2Lip()
    assert round(count_parameters(model) / 1e6, 1) == 36.3
    keys = model.state_dict().keys()
    for key in [
        "face_encoder_blocks.0.0.conv_block.0.weight",
        "face_encoder_blocks.6.1.conv_block.1.num_batches_tracked",
        "audio_encoder.12.conv_block.0.weight",
        "face_decoder_blocks.1.0.conv_block.0.weight",
        "face_decoder_blocks.6.2.conv_block.1.running_var",
        "output_block.0.conv_block.0.weight",
        "output_block.1.weight",
    ]:
        assert key in keys
    assert model.state_dict()["face_decoder_blocks.1.0.conv_block.0.weight"].shape == (1024, 512, 3, 3)
    out = model.eval()(torch.rand(2, 6, 96, 96), torch.rand(2, 1, 80, 16))
    assert out.shape == (2, 3, 96, 96) and out.min() >= 0 and out.max() <= 1


def test_syncnet_and_discriminator_shapes() -> None:
    audio, face = SyncNet().eval()(torch.randn(3, 1, 80, 16), torch.rand(3, 15, 48, 96))
    assert audio.shape == face.shape == (3, 512)
    assert torch.allclose(audio.norm(dim=1), torch.ones(3), atol=1e-5)
    assert QualityDiscriminator()(torch.rand(2, 3, 96, 96)).shape == (2, 1)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_imports_training_checkpoint_with_module_prefix_and_optimizer(tmp_path, legacy: bool) -> None:
    state = public_layout_state_dict()
    payload = {
        "state_dict": {f"module.{k}": v for k, v in state.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
        "global_step": 123,
        "global_epoch": 4,
    }
    path = tmp_path / "wav2lip.pth"
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    model = import_wav2lip(path)
    loaded = model.state_dict()
    for key in ("face_encoder_blocks.3.1.conv_block.0.weight", "output_block.1.bias"):
        assert torch.equal(loaded[key], state[key])


def test_imports_bare_state_dict_without_num_batches_tracked(tmp_path) -> None:
    state = {k: v for k, v in public_layout_state_dict(1).items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "bare.pth"
    torch.save(state, path)
    model = import_wav2lip(path)
    key = "audio_encoder.0.conv_block.0.weight"
    assert torch.equal(model.state_dict()[key], state[key])


def test_refuses_mismatched_file_listing_missing_unexpected_and_wrong_shapes(tmp_path) -> None:
    state = public_layout_state_dict()
    del state["output_block.1.weight"]
    state["extra_head.weight"] = torch.zeros(3)
    state["audio_encoder.0.conv_block.0.weight"] = torch.zeros(16, 1, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointMismatch) as info:
        import_wav2lip(path)
    error = info.value
    assert error.missing == ["output_block.1.weight"]
    assert error.unexpected == ["extra_head.weight"]
    assert error.wrong_shape == [("audio_encoder.0.conv_block.0.weight", (16, 1, 3, 3), (32, 1, 3, 3))]
    message = str(error)
    assert "missing tensors (1): output_block.1.weight" in message
    assert "unexpected tensors (1): extra_head.weight" in message
    assert "has (16, 1, 3, 3), expected (32, 1, 3, 3)" in message
    assert isinstance(error, InvalidInput)


def test_refuses_syncnet_checkpoint(tmp_path) -> None:
    path = tmp_path / "syncnet.pth"
    torch.save({"state_dict": SyncNet().state_dict()}, path)
    with pytest.raises(CheckpointMismatch, match="missing tensors"):
        import_wav2lip(path)


def test_refuses_pickled_objects_unless_trusted(tmp_path) -> None:
    path = tmp_path / "objects.pth"
    payload = {"state_dict": public_layout_state_dict(), "args": _Options()}
    torch.save(payload, path)
    with pytest.raises(InvalidInput, match="--trusted"):
        import_wav2lip(path)
    assert isinstance(import_wav2lip(path, trusted=True), Wav2Lip)


def test_missing_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(InvalidInput, match="not found"):
        import_wav2lip(tmp_path / "nope.pth")


class _Options:
    """Stands in for the argparse namespaces some training scripts pickled into checkpoints."""

    lr = 1e-4
