"""The image Dockerfiles, read as a builder reads them (tests/cluster/dockerfile_reader.py),
against pyproject.toml, the pins, the Makefile and the pods that run them.

No Docker here: what each stage copies and installs is checked instead of built, and the
operator image's package set is checked against the control plane's real import graph.
"""

from __future__ import annotations

import ast
import fnmatch
import posixpath
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from maap.podspec import POD_SECURITY_CONTEXT
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests" / "cluster"))
from dockerfile_reader import (
    Dockerfile,
    Instruction,
    PipInstall,
    Stage,
    parse,
    pip_install,
    pip_installs,
    shell_commands,
)
from pin_requirements import closure, makefile_packages, pyproject_dependencies

TRAINER = REPO / "trainer-image" / "Dockerfile"
TRAINER_CUDA = REPO / "trainer-image" / "Dockerfile.cuda"
OPERATOR = REPO / "operator" / "Dockerfile"
DOCKERFILES = [TRAINER, TRAINER_CUDA, OPERATOR]
TRAINERS = [TRAINER, TRAINER_CUDA]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
ids = lambda p: p.relative_to(REPO).as_posix()  # noqa: E731


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            out[canonicalize_name(name)] = version
    return out


CONSTRAINTS = pins(REPO / "trainer-image" / "constraints.txt")
OPERATOR_PINS = pins(REPO / "operator" / "requirements.txt")


def read(path: Path) -> Dockerfile:
    return parse(path.read_text())


def installing(stage: Stage, name: str) -> tuple[Instruction, PipInstall]:
    """The one `pip install` of the stage that names package `name` (pinned: name==x)."""

    def names(pip: PipInstall) -> set[str]:
        return {canonicalize_name(re.split(r"[=<>!~\[ ]", t)[0]) for t in pip.targets}

    found = [(i, p) for i, p in pip_installs(stage) if name in names(p)]
    assert len(found) == 1, f"{name}: installed by {len(found)} pip commands in the stage"
    return found[0]


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
    setuptools = PYPROJECT["tool"]["setuptools"]
    found = set()
    for top, src in setuptools["package-dir"].items():
        for module in (REPO / src).rglob("*.py"):
            assert (module.parent / "__init__.py").exists(), f"{module.parent} has no __init__"
            found.add(".".join((top, *module.parent.relative_to(REPO / src).parts)))
    assert sorted(setuptools["packages"]) == sorted(found)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=ids)
def test_each_image_builds_maap_from_a_copy_of_every_package(dockerfile: Path) -> None:
    """The `pip install` of maap itself sees, at the project directory, pyproject.toml, its
    readme and every package pyproject lists, each copied from its own source directory."""
    projects = [
        (
            stage,
            instruction,
            posixpath.normpath(posixpath.join(stage.workdir_at(instruction), target)),
        )
        for stage in read(dockerfile).stages
        for instruction, pip in pip_installs(stage)
        for target in pip.targets
        if target.startswith((".", "/"))
    ]
    assert len(projects) == 1, projects
    stage, instruction, project = projects[0]
    setuptools = PYPROJECT["tool"]["setuptools"]
    readme = PYPROJECT["project"]["readme"]
    wanted = {"pyproject.toml": "pyproject.toml", readme: readme}
    for package in setuptools["packages"]:
        top, *sub = package.split(".")
        source = "/".join([setuptools["package-dir"][top], *sub, "__init__.py"])
        wanted[source] = source
    for inside, source in wanted.items():
        got = stage.context_path(f"{project}/{inside}", instruction, REPO)
        assert got == source, f"{project}/{inside} holds {got}, not {source}"


def test_operator_image_installs_no_data_plane_package() -> None:
    """Every pip install there is --no-deps (else pyproject's torch comes in), from
    operator/requirements.txt, which must hold what its packages require and nothing of
    the data plane."""
    pips = [p for stage in read(OPERATOR).stages for _, p in pip_installs(stage)]
    for pip in pips:
        assert "--no-deps" in pip.options, f"{pip.command.argv} resolves pyproject's torch"
    assert [p.requirements for p in pips if p.requirements] == [("operator/requirements.txt",)]
    control, data = pyproject_dependencies()
    assert {r.name for r in control} >= {"kopf", "kubernetes", "pydantic"}
    data_only = set(closure(data)) - set(closure(control))
    assert {"torch", "transformers", "onnxruntime"} <= data_only
    assert not data_only & set(OPERATOR_PINS), data_only & set(OPERATOR_PINS)
    for req in control:
        version = OPERATOR_PINS.get(canonicalize_name(req.name))
        assert version and req.specifier.contains(version), f"{req.name}: {version}"
    # Closed under requirements: what a pinned package needs is pinned too (checked where
    # the installed version is the pinned one, whose metadata is then at hand).
    for name, version in OPERATOR_PINS.items():
        assert CONSTRAINTS.get(name, version) == version, f"{name}: images disagree"
        dist = metadata.distribution(name)
        if dist.version != version:
            continue
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                pinned = OPERATOR_PINS.get(canonicalize_name(req.name))
                assert pinned and req.specifier.contains(pinned, prereleases=True), (
                    f"{name}=={version} requires {req}; operator/requirements.txt has {pinned}"
                )


# Imported here when installed, skipped quietly when not (checked in a virtualenv with only
# operator/requirements.txt): oauthlib's optional signals, kubernetes' probe for google.auth
# (`google` is protobuf's namespace here), setuptools' .pth hook.
OPTIONAL_IMPORTS = {"blinker", "google", "_distutils_hack", "orjson", "sniffio"}


def test_operator_imports_need_only_its_requirements() -> None:
    """Every distribution `maap operator` imports is in operator/requirements.txt."""
    code = (
        "import sys, maap.cli, maap.handlers, maap.progress_api, maap.crd, maap.rbac\n"
        "import maap.gateway.serve, maap.gateway.app, maap.gateway.kube_backend\n"
        "import maap.gateway.kube_keys, maap.gateway.local_backend\n"
        "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    owners = metadata.packages_distributions()
    needed = {
        canonicalize_name(dist)
        for module in done.stdout.split()
        for dist in owners.get(module, [])
        if module not in ("maap", "maap_api", "maap_trainer") and module not in OPTIONAL_IMPORTS
    }
    missing = needed - set(OPERATOR_PINS)
    assert not missing, f"the operator imports {missing}: add them to pyproject's control plane"


def makefile_installs() -> list[PipInstall]:
    """The `pip install`s of the Makefile's install recipe, its variables substituted."""
    text = (REPO / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+) \??= (.*)$", text, re.M))
    recipe = re.search(r"^install:.*\n((?:\t.*\n)+)", text, re.M)
    assert recipe, "no install target in the Makefile"
    script = re.sub(r"\$\((\w+)\)", lambda m: variables[m.group(1)], recipe.group(1))
    found = [p for line in script.splitlines() for p in map(pip_install, shell_commands(line))]
    return [p for p in found if p is not None]


@pytest.mark.parametrize("dockerfile", TRAINERS, ids=ids)
def test_trainer_images_install_the_makefile_packages_as_the_makefile_does(
    dockerfile: Path,
) -> None:
    stage = read(dockerfile).stage("build")
    order = [p for _, p in pip_installs(stage)]
    flags = {"--no-deps", "--no-build-isolation"}
    for make in makefile_installs():
        for target in make.targets:
            req = Requirement(target)
            _, pip = installing(stage, canonicalize_name(req.name))
            assert target in pip.targets, f"{dockerfile.name}: {pip.targets}, Makefile: {req}"
            assert pip.options & flags == make.options & flags, f"{req.name}: {pip.options}"
            assert pip.constraints == ("trainer-image/constraints.txt",), pip.command.argv
            assert CONSTRAINTS[canonicalize_name(req.name)] == str(req.specifier).lstrip("=")
    # DeepSpeed builds against a torch installed by an earlier command (--no-build-isolation).
    _, deepspeed = installing(stage, "deepspeed")
    torch_first = [p for p in order if "torch" in str(p.targets) or "." in p.targets]
    assert torch_first and order.index(torch_first[0]) < order.index(deepspeed)


def test_cpu_image_installs_torch_at_the_pin_then_pyprojects_dependencies(tmp_path: Path) -> None:
    """torch from the CPU index at the constraints' version (the shell reads the pin out of
    the constraints file the stage copied), then pyproject's whole dependency list."""
    dockerfile = read(TRAINER)
    stage = dockerfile.stage("build")
    instruction, torch = installing(stage, "torch")
    assert stage.context_path("/src/trainer-image/constraints.txt", instruction, REPO)
    [spec] = torch.targets
    shell = subprocess.run(["bash", "-c", f'printf %s "{spec}"'], cwd=REPO, capture_output=True,
                           text=True, check=True)  # fmt: skip
    assert shell.stdout == f"torch=={CONSTRAINTS['torch']}"
    assert torch.index_url == "${TORCH_INDEX_URL}"
    [arg] = [i.args[0] for i in stage.of("ARG") if i.args[0].startswith("TORCH_INDEX_URL=")]
    assert arg == "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"
    # The dependency list: the RUN that installs -r /tmp/deps.txt writes it with python -c.
    [(run, deps)] = [(i, p) for i, p in pip_installs(stage) if p.requirements]
    assert deps.requirements == ("/tmp/deps.txt",) and deps.constraints
    [writer] = [c for i, c in stage.commands() if i is run and c.argv[:2] == ["python", "-c"]]
    assert stage.context_path("/src/pyproject.toml", run, REPO) == "pyproject.toml"
    (tmp_path / "pyproject.toml").write_bytes((REPO / "pyproject.toml").read_bytes())
    written = subprocess.run([sys.executable, *writer.argv[1:]], cwd=tmp_path, text=True,
                             capture_output=True, check=True).stdout.split("\n")  # fmt: skip
    assert [line for line in written if line] == PYPROJECT["project"]["dependencies"]


def deepspeed_builders(accelerator: str) -> dict[str, str]:
    """DS_BUILD_* variable -> op name, for the installed DeepSpeed (the images' pin), read
    from its op builders' sources (importing them imports torch). The CPU accelerator
    builds from op_builder/cpu; CUDA from op_builder, plus the CPU optimizers there."""
    assert metadata.version("deepspeed") == CONSTRAINTS["deepspeed"], "not the images' DeepSpeed"
    root = Path(metadata.distribution("deepspeed").locate_file("deepspeed/ops/op_builder"))
    files = sorted((root / "cpu").glob("*.py"))
    if accelerator != "cpu":
        files += sorted(root.glob("*.py"))
    found = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                values = {t.id: s.value.value for s in node.body if isinstance(s, ast.Assign)
                          for t in s.targets if isinstance(t, ast.Name)
                          and isinstance(s.value, ast.Constant)}  # fmt: skip
                if "BUILD_VAR" in values and "NAME" in values:
                    found[values["BUILD_VAR"]] = values["NAME"]
    return found


@pytest.mark.parametrize("dockerfile", TRAINERS, ids=ids)
def test_images_prebuild_real_deepspeed_ops_for_any_avx2_node(dockerfile: Path) -> None:
    """The DS_BUILD_* variables name ops the pinned DeepSpeed has, the build asserts
    exactly those, through the portable compiler wrapper, then rejects AVX-512 code."""
    stage = read(dockerfile).stage("build")
    instruction, deepspeed = installing(stage, "deepspeed")
    env = deepspeed.command.env
    builders = deepspeed_builders(env.get("DS_ACCELERATOR", "cuda"))
    assert env.pop("DS_BUILD_OPS") == "0", "only the ops named below"
    asked = {k for k, v in env.items() if k.startswith("DS_BUILD_") and v == "1"}
    assert asked <= set(builders), f"not DeepSpeed build variables: {asked - set(builders)}"
    same_run = [c for i, c in stage.commands() if i is instruction]
    [check] = [c for c in same_run if "installed_ops" in " ".join(c.argv)]
    assert set(re.findall(r"o\['(\w+)'\]", check.argv[-1])) == {builders[k] for k in asked}
    assert env["CC"] == env["CXX"] == "portable-cxx"
    assert stage.context_path("/usr/local/bin/portable-cxx", instruction, REPO) == (
        "trainer-image/portable-cxx.sh"
    )
    assert ["test", "$(grep -c zmm /tmp/ops.s)", "=", "0"] in [c.argv for c in same_run]


def test_portable_cxx_rewrites_the_build_machines_flags(tmp_path: Path) -> None:
    """DeepSpeed asks for -march=native and AVX-512; the wrapper builds for x86-64-v3."""
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


def test_cuda_image_toolkit_matches_torchs_cuda() -> None:
    """DeepSpeed refuses to build ops when nvcc's CUDA differs from torch's (13.x has no
    minor-version tolerance), so the devel image must carry torch's CUDA version."""
    dockerfile = read(TRAINER_CUDA)
    version = dockerfile.args["CUDA_VERSION"]
    assert version.split(".")[:2] == CONSTRAINTS["cuda-toolkit"].split(".")[:2]
    assert [s.base.startswith(f"nvidia/cuda:{version}-") for s in dockerfile.stages] == [True] * 2


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=ids)
def test_images_run_as_the_pods_user_on_the_constraints_python(dockerfile: Path) -> None:
    """Pods run as POD_SECURITY_CONTEXT's uid:gid; the image's user is that one and exists
    there. Its Python is the one the pins were resolved on, within requires-python."""
    parsed = read(dockerfile)
    uid, gid = POD_SECURITY_CONTEXT["runAsUser"], POD_SECURITY_CONTEXT["runAsGroup"]
    assert parsed.final.user() == f"{uid}:{gid}"
    [useradd] = [c.argv for _, c in parsed.final.commands() if c.argv[:1] == ["useradd"]]
    assert useradd[useradd.index("--uid") + 1] == str(uid)
    assert useradd[useradd.index("--gid") + 1] == str(gid)
    header = (REPO / "trainer-image" / "constraints.txt").read_text().splitlines()[0]
    minor = re.search(r"Python (\d+\.\d+)", header)
    assert minor, header
    if "PYTHON_IMAGE" in parsed.args:  # python:X.Y.Z-slim: that exact Python everywhere
        tag = re.fullmatch(r"python:(\d+\.\d+\.\d+)-slim-\w+", parsed.args["PYTHON_IMAGE"])
        assert tag and tag.group(1).startswith(f"{minor.group(1)}.")
        assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(tag.group(1))
        assert {s.base for s in parsed.stages} == {parsed.args["PYTHON_IMAGE"]}
    else:  # Ubuntu: that minor from apt in each stage; the virtualenv made with it
        python = f"python{minor.group(1)}"
        for stage in parsed.stages:
            apt = [c.argv for _, c in stage.commands() if c.argv[:2] == ["apt-get", "install"]]
            assert any(python in argv for argv in apt), f"{stage.base} installs no {python}"
        venvs = [c.argv for _, c in parsed.stage("build").commands() if "venv" in c.argv]
        assert venvs == [[python, "-m", "venv", "/opt/maap"]]


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=ids)
def test_dockerignore_keeps_what_the_dockerfiles_copy(dockerfile: Path) -> None:
    sources = [c.source for stage in read(dockerfile).stages for _, c in stage.copies()]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        for pattern in dockerignore_patterns():
            parts = Path(source).parts
            hit = any(fnmatch.fnmatch("/".join(parts[: i + 1]), pattern)
                      for i in range(len(parts)))  # fmt: skip
            assert not hit, f".dockerignore pattern {pattern!r} drops {source}"
