"""deploy/compose.yaml: the service talks to the Triton server it starts, with valid settings."""

from __future__ import annotations

from pathlib import Path

import yaml

from lipsync_service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"


def _services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_service_uses_the_triton_backend_of_the_triton_container() -> None:
    services = _services()
    service, triton = services["lipsync"], services["triton"]
    settings = Settings(**service["environment"])
    assert settings.backend.value == "triton"
    host, port = settings.triton_url.rsplit(":", 1)
    assert host == "triton" and f"--grpc-port={port}" in triton["command"]
    assert service["depends_on"]["triton"]["condition"] == "service_healthy"


def test_triton_serves_the_repository_of_this_checkout_on_a_gpu() -> None:
    triton = _services()["triton"]
    (mount,) = triton["volumes"]
    source, target, mode = mount.split(":")
    assert (COMPOSE.parent / source).resolve() == ROOT / "triton_repo" and mode == "ro"
    assert f"--model-repository={target}" in triton["command"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_service_builds_this_repository_and_publishes_its_ports_with_a_drain_grace() -> None:
    service = _services()["lipsync"]
    assert (COMPOSE.parent / service["build"]["context"]).resolve() == ROOT
    assert (ROOT / service["build"]["dockerfile"]).is_file()
    settings = Settings(**service["environment"])
    published = {p.split(":")[1] for p in service["ports"]}
    assert published == {str(settings.http_port), str(settings.grpc_port)}
    grace = service["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > settings.drain_timeout_s
