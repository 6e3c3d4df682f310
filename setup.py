"""Build hooks: generate the gRPC stubs from proto/ into lipsync_service/_proto, and ship triton_repo/ in the wheel."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_ROOT = ROOT / "proto"
OUT_PACKAGE = "lipsync_service._proto"
OUT_DIR = ROOT / "lipsync_service" / "_proto"
# The committed model repository (one copy, in the checkout) and where the wheel carries it; settings.py
# looks there first.
MODEL_REPOSITORY = ROOT / "triton_repo"
PACKAGED_REPOSITORY = Path("lipsync_service") / "model_repository"

# protoc writes `from nvidia.ai4m... import x_pb2`; NVIDIA's CUDA wheels own the top-level
# `nvidia` name, so the generated modules live inside our package and imports are rewritten.
_IMPORT = re.compile(r"^from nvidia\.ai4m(\S*) import", re.MULTILINE)


def generate_protos() -> None:
    """Run grpc_tools.protoc over proto/ and place importable modules under lipsync_service/_proto."""
    import grpc_tools
    from grpc_tools import protoc

    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={OUT_DIR}",
        f"--pyi_out={OUT_DIR}",
        f"--grpc_python_out={OUT_DIR}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on proto/")
    for path in OUT_DIR.rglob("*.py*"):
        text = path.read_text()
        fixed = _IMPORT.sub(lambda m: f"from {OUT_PACKAGE}.nvidia.ai4m{m.group(1)} import", text)
        if fixed != text:
            path.write_text(fixed)
    for folder in [OUT_DIR, *[p for p in OUT_DIR.rglob("*") if p.is_dir()]]:
        (folder / "__init__.py").touch()


def copy_model_repository(build_lib: Path) -> None:
    """Copy triton_repo/ into the built package, so an installed wheel serves its default model."""
    target = build_lib / PACKAGED_REPOSITORY
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(MODEL_REPOSITORY, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


class BuildPyWithProtos(build_py):
    """build_py that generates the stubs first, ships them as packages, and adds the model repository."""

    def run(self) -> None:
        generate_protos()
        generated = find_packages(str(ROOT), include=[f"{OUT_PACKAGE}*"])
        self.packages = sorted(set(self.packages or []) | set(generated))
        super().run()
        # An editable install reads triton_repo/ from the checkout itself: nothing to copy.
        if not getattr(self, "editable_mode", False):
            copy_model_repository(Path(self.build_lib))


def _packages() -> list[str]:
    own = find_packages(str(ROOT), include=["lipsync_service*"])
    models = ["lipsync_models"] + [f"lipsync_models.{p}" for p in find_packages(str(ROOT / "models"))]
    return own + models


setup(packages=_packages(), cmdclass={"build_py": BuildPyWithProtos})
