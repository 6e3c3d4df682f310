"""NIM_TAGS_SELECTOR: the model chosen at start-up by the tags in its config.pbtxt (parameters tag.<key>)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format

from lipsync_service.inference import ModelSelectionError, build_backend
from lipsync_service.inference.repository import (
    CONFIG_FILE,
    Target,
    parse_tags_selector,
    read_model_config,
    repository_models,
    write_model,
)
from lipsync_service.server.app import LipsyncServer, StartupError
from lipsync_service.settings import BackendKind, Settings
from tests import synth
from tests.triton.tiny_models import write_lip_shape_onnx

REPO_ROOT = Path(__file__).resolve().parents[2]
LISTING = "lipsync_de (language=de, quality=fast); lipsync_fr (language=fr); plain (no tags)"


def _tag(repo: Path, name: str, **tags: str) -> None:
    config = read_model_config(repo / name)
    for key, value in tags.items():
        config.parameters[f"tag.{key}"].string_value = value
    (repo / name / CONFIG_FILE).write_text(text_format.MessageToString(config))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three tiny lip_shape models (python_onnx: the embedded backend and the pytriton Triton both load them):
    lipsync_de (language=de, quality=fast), lipsync_fr (language=fr) and plain (no tags)."""
    pytest.importorskip("onnx", reason="the onnx package (dev extra) builds the tiny test models")
    root = tmp_path_factory.mktemp("tagged")
    onnx_path = write_lip_shape_onnx(root / "src" / "lip_shape.onnx")
    repo = root / "models"
    for name in ("lipsync_de", "lipsync_fr", "plain"):
        write_model(Target.PYTHON_ONNX, onnx_path, repo, name, max_batch=4, gpu=False, ort_threads=1)
    _tag(repo, "lipsync_de", language="de", quality="fast")
    _tag(repo, "lipsync_fr", language="fr")
    return repo


def _settings(repo: Path, selector: str, **kw: Any) -> Settings:
    return Settings(model_repository=repo, tags_selector=selector, ort_intra_op_threads=1, **kw)


def _served(settings: Settings) -> str:
    backend = build_backend(settings)
    try:
        return backend.spec.name
    finally:
        backend.close()


# The selector's format ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "pairs"), [
    ("", {}),
    ("language=de", {"language": "de"}),
    (" language = de , quality=fast,", {"language": "de", "quality": "fast"}),
    ("language=de,language=de", {"language": "de"}),
])
def test_selector_is_comma_separated_key_value_pairs(text, pairs):
    assert parse_tags_selector(text) == pairs


@pytest.mark.parametrize(("text", "message"), [
    ("language", "'language' is not a key=value pair"),
    ("=de", "'=de' is not a key=value pair"),
    ("language=de,language=fr", "'language' is given two values"),
])
def test_a_malformed_selector_is_refused(text, message):
    with pytest.raises(ModelSelectionError, match=message):
        parse_tags_selector(text)


def test_tags_are_read_from_config_parameters(repo):
    models = {m.name: m for m in repository_models(repo)}
    assert models["lipsync_de"].tags == (("language", "de"), ("quality", "fast"))
    assert models["lipsync_fr"].tags == (("language", "fr"),)
    assert models["plain"].tags == ()


# Selection with the embedded ONNX Runtime backend ---------------------------------------------------------------

@pytest.mark.parametrize(("selector", "model"), [
    ("language=de", "lipsync_de"),
    ("language=fr", "lipsync_fr"),
    ("language=de,quality=fast", "lipsync_de"),
    ("name=plain", "plain"),  # "name" matches the model's name when it has no tag of that name
])
def test_the_model_whose_tags_match_every_pair_is_served(repo, selector, model):
    assert _served(_settings(repo, selector, model_name="plain")) == model


def test_without_a_selector_the_model_name_setting_stands(repo):
    assert _served(_settings(repo, "", model_name="lipsync_fr")) == "lipsync_fr"


def test_of_several_matches_the_model_name_setting_wins_else_it_is_an_error(repo):
    # Two models tagged language=de: NV_AI4M_LS_MODEL_NAME picks one of them; else the selector is ambiguous.
    shared = repo.parent / "shared"
    if not shared.exists():
        onnx_path = write_lip_shape_onnx(repo.parent / "src" / "lip_shape2.onnx")
        for name in ("a_de", "b_de"):
            write_model(Target.PYTHON_ONNX, onnx_path, shared, name, max_batch=4, gpu=False, ort_threads=1)
            _tag(shared, name, language="de")
    assert _served(_settings(shared, "language=de", model_name="b_de")) == "b_de"
    with pytest.raises(ModelSelectionError, match="matches several models in .*: a_de, b_de; add a pair"):
        build_backend(_settings(shared, "language=de", model_name="lipsync_generator"))


def test_a_selector_naming_no_model_lists_the_models_and_their_tags(repo):
    with pytest.raises(ModelSelectionError) as info:
        build_backend(_settings(repo, "language=es"))
    message = str(info.value)
    assert message.startswith(f"NIM_TAGS_SELECTOR=language=es matches no model in the model repository {repo}; ")
    assert f"available models and their tags: {LISTING}." in message


# Start-up: the server and the CLI -------------------------------------------------------------------------------

def test_the_server_does_not_start(repo):
    settings = _settings(repo, "language=es", host="127.0.0.1", grpc_port=0, http_port=0, processor="neural")

    async def start() -> None:
        await LipsyncServer(settings).start()

    with pytest.raises(StartupError, match=re.escape(f"matches no model in the model repository {repo}; ")) as info:
        asyncio.run(start())
    assert LISTING in str(info.value)


@pytest.fixture
def env(repo: Path) -> Iterator[dict[str, str]]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("NIM_", "NV_AI4M_"))}
    yield {**keep, "PYTHONPATH": str(REPO_ROOT), "NV_AI4M_LS_MODEL_REPOSITORY": str(repo),
           "NIM_TAGS_SELECTOR": "language=es", "NV_AI4M_LS_PROCESSOR": "neural", "NIM_HOST": "127.0.0.1",
           "NIM_GRPC_API_PORT": "0", "NIM_HTTP_API_PORT": "0", "NV_AI4M_ORT_THREADS": "1"}


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    main = "import sys; from lipsync_service.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", main, *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT)


def test_serve_exits_with_status_1_naming_the_models(env):
    done = _cli(["serve"], env)
    assert done.returncode == 1, done.stderr
    assert "lipsync-service serve: error: cannot start: NIM_TAGS_SELECTOR=language=es matches no model" in done.stderr
    assert LISTING in done.stderr


def test_run_exits_with_status_1_naming_the_models(env, tmp_path):
    video = synth.make_video(tmp_path / "v.mp4", seconds=0.4)
    audio = synth.make_wav(tmp_path / "a.wav", seconds=0.4)
    done = _cli(["run", "--video", str(video), "--audio", str(audio), "--output", str(tmp_path / "o.mp4")], env)
    assert done.returncode == 1, done.stderr
    assert "lipsync-service run: error: NIM_TAGS_SELECTOR=language=es matches no model" in done.stderr
    assert LISTING in done.stderr
    assert not (tmp_path / "o.mp4").exists()


# Selection on a real Triton server ------------------------------------------------------------------------------

@pytest.mark.triton
def test_triton_serves_the_model_the_selector_names(repo):
    from tests.triton.conftest import _start_or_skip

    server = _start_or_skip(repo)
    try:
        settings = Settings(backend=BackendKind.TRITON, triton_url=server.url, tags_selector="language=fr")
        assert _served(settings) == "lipsync_fr"
        wrong = Settings(backend=BackendKind.TRITON, triton_url=server.url, tags_selector="language=es")
        expected = re.escape(f"matches no model in Triton at {server.url}; ")
        with pytest.raises(ModelSelectionError, match=expected) as info:
            build_backend(wrong)
        assert LISTING in str(info.value)
    finally:
        server.cleanup()
