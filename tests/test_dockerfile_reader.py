"""tests/cluster/dockerfile_reader.py: what the image keys and the image tests rely on."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "cluster"))
from dockerfile_reader import Command, parse, pip_install, shell_commands

DOCKERFILE = """\
ARG BASE=python:3.11.13-slim
FROM ${BASE} AS build
WORKDIR /src
# a comment
ENV A=1 B="two words"
COPY pyproject.toml README.md ./
COPY pkg pkg
RUN X=1 Y=2 pip install -c c.txt --no-deps \\
# a comment inside the continued line, dropped as Docker does
      "a==1" . \\
 && { test -e /x || apt-get install -y g++; } 2>/dev/null ; echo "a && b" >/tmp/log
FROM ${BASE}
COPY --from=build /src /src
USER 1000:1000
"""


def test_stages_copies_and_workdirs() -> None:
    parsed = parse(DOCKERFILE)
    build, final = parsed.stages
    assert (build.base, build.name, final.name) == ("python:3.11.13-slim", "build", None)
    assert [(c.source, c.destination, c.into_directory) for _, c in build.copies()] == [
        ("pyproject.toml", "/src", True), ("README.md", "/src", True), ("pkg", "/src/pkg", False),
    ]  # fmt: skip
    assert final.copies() == [] and final.user() == "1000:1000"
    [run] = build.of("RUN")
    assert run.line == 8 and build.workdir_at(run) == "/src"
    assert build.of("ENV")[0].args == ["A=1", "B=two words"]


def test_run_lines_split_into_simple_commands() -> None:
    commands = [c for _, c in parse(DOCKERFILE).stages[0].commands()]
    assert commands == [
        Command({"X": "1", "Y": "2"}, ["pip", "install", "-c", "c.txt", "--no-deps", "a==1", "."]),
        Command({}, ["test", "-e", "/x"]),
        Command({}, ["apt-get", "install", "-y", "g++"]),
        Command({}, ["echo", "a && b"]),
    ]
    pip = pip_install(commands[0])
    assert pip and pip.options == {"--no-deps"} and pip.constraints == ("c.txt",)
    assert pip.targets == ("a==1", ".") and pip_install(commands[1]) is None
    [module_pip] = shell_commands("python -m pip install -r r.txt")
    assert pip_install(module_pip).requirements == ("r.txt",)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("COPY a b\n", "before the first FROM"),
        ("FROM ${NOPE}\n", "no ARG default"),
        ("FROM x\nRUN a \\\n", "ends with a continuation"),
        ('FROM x\nRUN ["echo", "hi"]\n', "exec form"),
        ("FROM x\nCOPY a\n", "a source and a destination"),
    ],
)
def test_what_it_cannot_place_is_an_error(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse(text)
