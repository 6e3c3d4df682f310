"""deploy/compose.yaml: the service talks to the Triton server it starts, with valid settings."""

from __future__ import annotations

from pathlib import Path

import yaml

from lipsync_service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _flags(command: list[str]) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)


def test_service_uses_the_triton_backend_of_the_triton_container() -> None:
    services = _compose()["services"]
    service, triton = services["lipsync"], services["triton"]
    settings = Settings(**service["environment"])
    assert settings.backend.value == "triton"
    host, port = settings.triton_url.rsplit(":", 1)
    assert host == "triton" and _flags(triton["command"])["grpc-port"] == port
    assert service["depends_on"]["triton"]["condition"] == "service_healthy"


def test_triton_serves_a_repository_built_from_this_checkouts_model_on_a_gpu() -> None:
    doc = _compose()
    services = doc["services"]
    builder, triton = services["model-repo"], services["triton"]
    assert builder["command"][:3] == ["lipsync-service", "models", "build-repo"]
    flags = _flags(builder["command"])
    mounts = dict(v.split(":")[:2] for v in builder["volumes"])
    # The ONNX file the step reads is the committed one.
    source = next(src for src, dst in mounts.items() if flags["onnx"].startswith(dst + "/"))
    onnx = (COMPOSE.parent / source).resolve() / Path(flags["onnx"]).relative_to(mounts[source])
    assert onnx.is_relative_to(ROOT / "triton_repo") and onnx.is_file()
    # Its output volume is what Triton serves, read-only, after the step succeeded.
    out_volume = next(src for src, dst in mounts.items() if dst == flags["out"])
    assert out_volume in doc["volumes"]
    triton_mounts = {v.split(":")[0]: v.split(":")[1:] for v in triton["volumes"]}
    target, mode = triton_mounts[out_volume]
    assert mode == "ro" and _flags(triton["command"])["model-repository"] == target
    assert triton["depends_on"]["model-repo"]["condition"] == "service_completed_successfully"
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_service_builds_this_repository_and_publishes_its_ports_with_a_drain_grace() -> None:
    service = _compose()["services"]["lipsync"]
    assert (COMPOSE.parent / service["build"]["context"]).resolve() == ROOT
    assert (ROOT / service["build"]["dockerfile"]).is_file()
    settings = Settings(**service["environment"])
    published = {p.split(":")[1] for p in service["ports"]}
    assert published == {str(settings.http_port), str(settings.grpc_port)}
    grace = service["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > settings.drain_timeout_s
