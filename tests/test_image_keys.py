"""The content keys of tests/cluster/image_keys.py: an image is rebuilt exactly when what its
Dockerfile copies in (or the Dockerfile, its build arguments, its base) changes.

No buildah needed: the keys are hashes of files, computed on throwaway git repositories: a
small one, and a copy of this repository's image inputs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "cluster"))
import image_keys

DOCKERFILE = """\
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
FROM ${PYTHON_IMAGE} AS build
COPY req.txt req.txt
COPY --chown=1000:1000 pkg \\
     extra/tool.sh ./
RUN echo built
FROM ${PYTHON_IMAGE}
COPY --from=build /src /src
COPY ["data/one.json", "/etc/one.json"]
"""


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture()
def context(tmp_path: Path) -> Path:
    files = {
        "Dockerfile": DOCKERFILE,
        "req.txt": "torch==2.15.0\n",
        "pkg/__init__.py": "",
        "pkg/core.py": "VALUE = 1\n",
        "extra/tool.sh": "#!/bin/sh\n",
        "data/one.json": "{}\n",
        "data/two.json": "{}\n",
        "unrelated.txt": "notes\n",
        ".gitignore": "*.pyc\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    return tmp_path


def key_of(context: Path, args: dict[str, str] | None = None, base: str = "base1") -> str:
    return image_keys.image_key(context / "Dockerfile", context, args or {}, base)


def test_copy_sources_reads_every_copy_form_but_other_stages() -> None:
    sources = image_keys.copy_sources(DOCKERFILE)
    assert sources == ["req.txt", "pkg", "extra/tool.sh", "data/one.json"]


def test_key_changes_with_each_copied_file_and_only_those(context: Path) -> None:
    before = key_of(context)
    assert key_of(context) == before
    for name in ("req.txt", "pkg/core.py", "extra/tool.sh", "data/one.json"):
        path = context / name
        text = path.read_text()
        path.write_text(text + "# changed\n")
        assert key_of(context) != before, f"{name} changed but the key did not"
        path.write_text(text)
        assert key_of(context) == before
    # Not copied in, or not in the build context (ignored by git): same key.
    (context / "unrelated.txt").write_text("other notes\n")
    (context / "data" / "two.json").write_text('{"a": 1}\n')
    (context / "pkg" / "core.pyc").write_bytes(b"\0")
    (context / "notes.md").write_text("new\n")
    assert key_of(context) == before


def test_key_changes_with_new_files_modes_dockerfile_args_and_base(context: Path) -> None:
    before = key_of(context)
    (context / "pkg" / "new.py").write_text("")  # untracked, not ignored: in the context
    assert key_of(context) != before
    (context / "pkg" / "new.py").unlink()
    assert key_of(context) == before
    (context / "extra" / "tool.sh").chmod(0o755)
    assert key_of(context) != before
    (context / "extra" / "tool.sh").chmod(0o644)
    assert key_of(context, {"TORCH_INDEX_URL": "https://pypi.org/simple"}) != before
    assert key_of(context, base="base2") != before
    (context / "Dockerfile").write_text(DOCKERFILE + "USER 1000:1000\n")
    assert key_of(context) != before


@pytest.fixture()
def repo_copy(tmp_path: Path) -> Path:
    """The images' build inputs of this repository (their Dockerfiles, .dockerignore and
    every file they copy), plus files they do not copy, in a throwaway git repository."""
    names = {image.dockerfile for image in image_keys.IMAGES.values()} | {".dockerignore"}
    for image in image_keys.IMAGES.values():
        sources = image_keys.copy_sources((REPO / image.dockerfile).read_text())
        names |= set(image_keys.context_files(REPO, sources))
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    for name in ("docs/notes.md", "tests/test_x.py", "examples/job.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    return tmp_path


def repo_keys(context: Path) -> dict[str, str]:
    return {
        name: image_keys.image_key(context / image.dockerfile, context, image.args, "base")
        for name, image in image_keys.IMAGES.items()
    }


def test_repo_images_are_keyed_by_what_each_one_copies(repo_copy: Path) -> None:
    before = repo_keys(repo_copy)
    assert before["trainer"] != before["operator"]
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    for name, image in image_keys.IMAGES.items():
        sources = image_keys.copy_sources((REPO / image.dockerfile).read_text())
        hashed = image_keys.context_files(repo_copy, sources)
        for package in setuptools["packages"]:  # both images install every package
            top, *sub = package.split(".")
            init = "/".join([setuptools["package-dir"][top], *sub, "__init__.py"])
            assert init in hashed, f"{name}: {init} is not hashed"
    changed_by = {
        "api/maap_api/finetunejob.py": {"trainer", "operator"},
        "trainer-image/maap_trainer/serve/server.py": {"trainer", "operator"},
        "README.md": {"trainer", "operator"},  # pyproject's readme: part of the install
        "trainer-image/constraints.txt": {"trainer"},
        "trainer-image/portable-cxx.sh": {"trainer"},
        "operator/requirements.txt": {"operator"},
        "docs/notes.md": set(),
        "tests/test_x.py": set(),
        "examples/job.yaml": set(),
    }
    for name, images in changed_by.items():
        path = repo_copy / name
        text = path.read_text()
        path.write_text(text + "\n# changed\n")
        after = repo_keys(repo_copy)
        assert {n for n in after if after[n] != before[n]} == images, name
        path.write_text(text)
    (repo_copy / "operator" / "maap" / "new_module.py").write_text("")  # untracked: copied
    after = repo_keys(repo_copy)
    assert after["trainer"] != before["trainer"] and after["operator"] != before["operator"]
