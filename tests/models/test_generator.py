"""Our generator: contract shapes at every face size, audio actually conditions the output, checkpoints round-trip."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from lipsync_models.generator import (  # noqa: E402
    GeneratorConfig,
    build_generator,
    load_generator,
    save_generator,
)
from lipsync_models.wav2lip import count_parameters  # noqa: E402


@pytest.mark.parametrize("size", [96, 128, 192, 256])
def test_contract_shapes_and_range(size: int) -> None:
    model = build_generator(GeneratorConfig.for_face_size(size))
    with torch.no_grad():
        out = model(torch.rand(2, 6, size, size), torch.randn(2, 1, 80, 16))
    assert out.shape == (2, 3, size, size)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_default_is_small() -> None:
    params = count_parameters(build_generator())
    assert 1_000_000 < params < 5_000_000, params


def test_gru_reads_overlapping_mel_subwindows() -> None:
    config = GeneratorConfig()
    assert config.num_subwindows == 3  # steps 0-7, 4-11, 8-15 of the 16-step window
    assert isinstance(build_generator(config).audio.gru, torch.nn.GRU)


def test_output_depends_on_the_mel_window() -> None:
    model = build_generator()
    face = torch.rand(1, 6, 96, 96)
    with torch.no_grad():
        quiet = model(face, torch.full((1, 1, 80, 16), -4.0))
        loud = model(face, torch.randn(1, 1, 80, 16) * 2)
    assert float((quiet - loud).abs().max()) > 1e-4


def test_initialisation_is_deterministic() -> None:
    a, b = build_generator(seed=3), build_generator(seed=3)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert not torch.equal(build_generator(seed=4).head.weight, a.head.weight)


def test_checkpoint_round_trip(tmp_path) -> None:
    config = GeneratorConfig.for_face_size(128, gru_hidden=64)
    model = build_generator(config, seed=5)
    save_generator(model, tmp_path / "g.pt", extra={"step": 10})
    loaded = load_generator(tmp_path / "g.pt")
    assert loaded.config == config
    face, mel = torch.rand(1, 6, 128, 128), torch.randn(1, 1, 80, 16)
    with torch.no_grad():
        assert torch.equal(model(face, mel), loaded(face, mel))


def test_config_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="face_size"):
        GeneratorConfig(face_size=100)
    with pytest.raises(ValueError, match="unknown generator config keys"):
        GeneratorConfig.from_dict({"face_size": 96, "widht": 3})
