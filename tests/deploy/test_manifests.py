"""Kubernetes manifests: valid against the Kubernetes schema (offline) and consistent with each other,
with the service's settings and with the container image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lipsync_service.server.metrics import Metrics
from lipsync_service.settings import Settings
from tests.deploy._dockerfile import stages

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is in the test extra: pip install -e '.[test]'"
)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# 1.30: the oldest release where preStop `sleep` is on by default; plus the newest schema the package ships.
SCHEMA_VERSIONS = ["1.30", kubernetes_validate.latest_version()]


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _docs() -> list[dict[str, Any]]:
    return [d for p in _manifest_files() for d in yaml.safe_load_all(p.read_text()) if d]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def _settings_from_configmap() -> Settings:
    data = _one("ConfigMap", "lipsync-service-config")["data"]
    return Settings(**data)


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_manifest_is_valid_against_the_kubernetes_schema(path: Path, version: str) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs, f"{path.name} holds no resource"
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata']['name']} (Kubernetes {version}): {exc.message}")


def test_schema_validation_rejects_a_misspelt_field() -> None:
    pdb = _one("PodDisruptionBudget", "lipsync-service")
    broken = {**pdb, "spec": {**pdb["spec"], "maxUnavalable": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, SCHEMA_VERSIONS[0], strict=True)


def test_kustomization_lists_exactly_the_manifests() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == [p.name for p in _manifest_files()]


def test_selectors_match_labels_and_named_ports_exist() -> None:
    docs = _docs()
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    for dep in deployments:
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert _matches(dep["spec"]["selector"]["matchLabels"], labels), dep["metadata"]["name"]
    for svc in (d for d in docs if d["kind"] == "Service"):
        targets = [d for d in deployments
                   if _matches(svc["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
        assert len(targets) == 1, f"Service {svc['metadata']['name']} selects {len(targets)} deployments"
        port_names = {p["name"] for c in targets[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names, (
                f"{svc['metadata']['name']}: no container port {port['targetPort']}")
    service = _one("Deployment", "lipsync-service")
    pdb = _one("PodDisruptionBudget", "lipsync-service")
    assert _matches(pdb["spec"]["selector"]["matchLabels"], service["spec"]["template"]["metadata"]["labels"])
    hpa = _one("HorizontalPodAutoscaler", "lipsync-service")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", "lipsync-service")
    assert hpa["spec"]["minReplicas"] >= 2, "with one replica the PDB would block every node drain"


def test_grpc_service_is_headless_for_client_side_load_balancing() -> None:
    svc = _one("Service", "lipsync-service")
    assert svc["spec"]["clusterIP"] == "None"
    assert [p["port"] for p in svc["spec"]["ports"]] == [_settings_from_configmap().grpc_port]


def test_configmap_holds_only_real_settings_and_ports_match_them() -> None:
    data = _one("ConfigMap", "lipsync-service-config")["data"]
    aliases = {c for f in Settings.model_fields.values() for c in getattr(f.validation_alias, "choices", [])}
    assert set(data) <= aliases, f"ConfigMap keys no setting reads: {sorted(set(data) - aliases)}"
    settings = Settings(**data)
    defaults = Settings()
    assert (settings.grpc_port, settings.http_port) == (defaults.grpc_port, defaults.http_port) == (8001, 8000)
    dep = _one("Deployment", "lipsync-service")
    container = _container(dep, "lipsync-service")
    assert container["envFrom"] == [{"configMapRef": {"name": "lipsync-service-config"}}]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": settings.grpc_port, "http": settings.http_port}
    # Native gRPC probes on the gRPC port; liveness on HTTP so it stays green while draining.
    assert container["readinessProbe"]["grpc"]["port"] == settings.grpc_port
    assert container["startupProbe"]["grpc"]["port"] == settings.grpc_port
    assert container["livenessProbe"]["httpGet"] == {"path": "/v1/health/live", "port": settings.http_port}


def test_grace_period_outlasts_the_drain() -> None:
    settings = _settings_from_configmap()
    pod = _one("Deployment", "lipsync-service")["spec"]["template"]["spec"]
    pre_stop = _container({"spec": {"template": {"spec": pod}}}, "lipsync-service")["lifecycle"]["preStop"]
    pause = pre_stop.get("sleep", {}).get("seconds", 0)
    assert pod["terminationGracePeriodSeconds"] > settings.drain_timeout_s + pause


def test_tls_secret_mount_provides_the_configured_paths() -> None:
    settings = _settings_from_configmap()
    dep = _one("Deployment", "lipsync-service")
    container = _container(dep, "lipsync-service")
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in container["volumeMounts"] if volumes[m["name"]].get("secret"))
    assert volumes[mount["name"]]["secret"]["secretName"] == "lipsync-service-tls"
    assert mount.get("readOnly") is True
    for path in (settings.ssl_cert_path, settings.ssl_key_path, settings.ssl_ca_path):
        assert path is not None and str(path.parent) == mount["mountPath"]
    # The keys `kubectl create secret tls` (+ ca.crt) writes, which deploy/README.md tells users to run.
    assert {settings.ssl_cert_path.name, settings.ssl_key_path.name, settings.ssl_ca_path.name} == {
        "tls.crt", "tls.key", "ca.crt"}


def test_pod_runs_as_the_image_user_with_writable_spool_and_tmp() -> None:
    _, built = stages(ROOT / "Dockerfile")
    image_uid = int(built[-1].all("USER")[-1].args.split(":")[0])
    dep = _one("Deployment", "lipsync-service")
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid
    container = _container(dep, "lipsync-service")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {m["mountPath"] for m in container["volumeMounts"] if "emptyDir" in volumes[m["name"]]}
    settings = _settings_from_configmap()
    assert str(settings.spool_dir) in writable and "/tmp" in writable


def test_triton_gets_a_gpu_and_the_service_points_at_it() -> None:
    triton = _one("Deployment", "lipsync-triton")
    container = _container(triton, "triton")
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    settings = _settings_from_configmap()
    assert settings.backend.value == "triton"
    host, port = settings.triton_url.rsplit(":", 1)
    svc = _one("Service", host)
    assert int(port) in {p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc"}
    assert f"--grpc-port={port}" in container["args"]
    # The init container builds Triton's repository from the ONNX file where the image puts it.
    _, built = stages(ROOT / "Dockerfile")
    repo = built[-1].env()["NV_AI4M_LS_MODEL_REPOSITORY"]
    init = triton["spec"]["template"]["spec"]["initContainers"][0]
    flags = dict(a[2:].split("=", 1) for a in init["command"] if a.startswith("--"))
    assert init["command"][:3] == ["lipsync-service", "models", "build-repo"]
    assert flags["onnx"].startswith(repo + "/")
    assert (ROOT / "triton_repo" / Path(flags["onnx"]).relative_to(repo)).is_file()
    assert flags["out"] == init["volumeMounts"][0]["mountPath"]
    assert "--model-repository=" + flags["out"] in container["args"]


def test_triton_init_command_builds_a_loadable_repository(tmp_path: Path) -> None:
    """Runs the init container's command (paths mapped to this checkout) and checks Triton's config."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from lipsync_service.cli import main

    _, built = stages(ROOT / "Dockerfile")
    repo = built[-1].env()["NV_AI4M_LS_MODEL_REPOSITORY"]
    init = _one("Deployment", "lipsync-triton")["spec"]["template"]["spec"]["initContainers"][0]
    argv = [a.replace(repo, str(ROOT / "triton_repo")).replace("--out=/models", f"--out={tmp_path}")
            for a in init["command"][1:]]
    assert main(argv) == 0
    (config_path,) = tmp_path.glob("*/config.pbtxt")
    config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
    assert config.platform == "onnxruntime_onnx"
    assert config.name == _settings_from_configmap().model_name
    assert (config_path.parent / "1" / "model.onnx").is_file()
    assert all(g.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU for g in config.instance_group)


def test_autoscaler_metric_is_served_by_the_service_and_the_adapter() -> None:
    hpa = _one("HorizontalPodAutoscaler", "lipsync-service")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    exposition, _ = Metrics().render()
    assert f"\n{name} ".encode() in b"\n" + exposition, f"the service exports no {name}"
    adapter = yaml.safe_load((ROOT / "deploy" / "prometheus-adapter-values.yaml").read_text())
    assert any(rule["name"]["as"] == name and name in rule["seriesQuery"] for rule in adapter["rules"]["custom"])
    # The target sits below the per-pod slot count, so pods scale out before streams queue.
    target = metric["pods"]["target"]["averageValue"]
    value = int(target[:-1]) / 1000 if target.endswith("m") else float(target)
    assert 0 < value <= _settings_from_configmap().max_concurrent_streams
