"""`lipsync-service models ...` end to end: import a public-layout checkpoint, build repositories, clear refusals."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lipsync_models.export import export_onnx  # noqa: E402
from lipsync_models.generator import build_generator  # noqa: E402
from lipsync_service.cli import main  # noqa: E402
from lipsync_service.inference.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from lipsync_service.inference.repository import read_model_config  # noqa: E402

from .test_wav2lip_import import public_layout_state_dict  # noqa: E402


def test_import_wav2lip_writes_a_servable_model(tmp_path, capsys) -> None:
    ckpt = tmp_path / "wav2lip_gan.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in public_layout_state_dict().items()}}, ckpt,
               _use_new_zipfile_serialization=False)
    assert main(["models", "import-wav2lip", str(ckpt), "--repo", str(tmp_path / "repo"), "--name", "w2l"]) == 0
    assert "NV_AI4M_LS_MODEL_NAME=w2l" in capsys.readouterr().out
    config = read_model_config(tmp_path / "repo" / "w2l")
    assert config.backend == "python" and config.max_batch_size == 16
    backend = OnnxRuntimeBackend.from_repository(tmp_path / "repo", "w2l")
    assert backend.spec.face_size == 96 and "Wav2Lip" in backend.spec.description
    out = backend.infer(np.random.rand(2, 6, 96, 96).astype(np.float32), np.zeros((2, 1, 80, 16), np.float32))
    assert out.shape == (2, 3, 96, 96)


def test_import_wav2lip_refuses_mismatch_with_a_clear_message(tmp_path, capsys) -> None:
    state = public_layout_state_dict()
    del state["output_block.1.bias"]
    ckpt = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, ckpt)
    assert main(["models", "import-wav2lip", str(ckpt), "--repo", str(tmp_path / "repo")]) == 1
    err = capsys.readouterr().err
    assert "missing tensors (1): output_block.1.bias" in err
    assert not (tmp_path / "repo" / "wav2lip").exists()


@pytest.mark.parametrize("target", ["python_onnx", "onnxruntime_onnx"])
def test_build_repo_targets(tmp_path, target: str) -> None:
    onnx_path = export_onnx(build_generator(), tmp_path / "g.onnx", 96, description="tiny")
    out = tmp_path / "repo"
    args = ["models", "build-repo", "--target", target, "--onnx", str(onnx_path), "--out", str(out),
            "--max-batch", "8", "--instances", "2", "--cpu"]
    assert main(args) == 0
    config = read_model_config(out / "lipsync_generator")
    files = sorted(p.name for p in (out / "lipsync_generator" / "1").iterdir())
    if target == "python_onnx":
        assert config.backend == "python" and files == ["model.onnx", "model.py"]
    else:
        assert config.platform == "onnxruntime_onnx" and files == ["model.onnx"]
    assert config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.instance_group[0].count == 2
    assert OnnxRuntimeBackend.from_repository(out, "lipsync_generator").spec.max_batch_size == 8


def test_build_repo_refuses_an_onnx_that_breaks_the_contract(tmp_path, capsys) -> None:
    class Wrong(torch.nn.Module):
        def forward(self, face, mel):
            return face[:, :3, :48, :48] + mel.mean()

    bad = export_onnx(Wrong(), tmp_path / "bad.onnx", 96)
    assert main(["models", "build-repo", "--target", "python_onnx", "--onnx", str(bad), "--out", str(tmp_path)]) == 1
    assert "do not match the contract" in capsys.readouterr().err
