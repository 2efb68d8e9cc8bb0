"""A small Dockerfile reader: stages, instructions, what COPY brings in, and the commands of
RUN lines (shell-split, with their `VAR=value` prefixes), for the image keys and the image
tests. Standard library only.

It reads what our Dockerfiles use (ARG, FROM ... AS, WORKDIR, ENV, COPY/ADD with flags or
JSON, RUN in shell form with `&&`, `;`, `||`, `|`, braces, redirections) and raises on
anything it cannot place, rather than guess. A `$(...)` stays whole inside its quoted word
(quotes nested inside it are not read: nothing here evaluates it).
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
_ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
_OPERATORS = {"&&", "||", ";", "|", "&"}
_REDIRECTIONS = {">", ">>", "<", ">&", "<&", "&>"}


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper-cased: FROM, RUN, COPY, ...
    flags: dict[str, str]  # --from=build, --chown=1000:1000 (COPY, ADD, FROM)
    args: list[str]  # COPY/ADD: sources then destination; RUN: the shell text; else words
    line: int  # where it starts, 1-based


@dataclass(frozen=True)
class Command:
    """One simple command of a RUN line: `VAR=value ... argv`."""

    env: dict[str, str]
    argv: list[str]


@dataclass(frozen=True)
class Copy:
    """One COPY/ADD source and where it lands (an absolute path in the image)."""

    source: str  # as written, relative to the build context
    destination: str
    into_directory: bool  # the destination is a directory the source goes into


@dataclass
class Stage:
    base: str  # the FROM image, build arguments substituted
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def workdir_at(self, instruction: Instruction) -> str:
        """The working directory an instruction runs in."""
        workdir = "/"
        for i in self.instructions:
            if i is instruction:
                return workdir
            if i.keyword == "WORKDIR":
                workdir = posixpath.join(workdir, i.args[0])
        raise ValueError("the instruction is not in this stage")

    def copies(self) -> list[tuple[Instruction, Copy]]:
        """Each file or directory the stage's COPY/ADD lines bring in from the context."""
        out = []
        for i in self.instructions:
            if i.keyword not in ("COPY", "ADD") or "from" in i.flags:
                continue
            *sources, dest = i.args
            into = dest.endswith("/") or len(sources) > 1
            dest = posixpath.normpath(posixpath.join(self.workdir_at(i), dest))
            out += [(i, Copy(s, dest, into)) for s in sources]
        return out

    def context_path(self, path: str, before: Instruction, context: Path) -> str | None:
        """Which context path the COPY lines above `before` put at the image's `path` (the
        last one wins), or None. A directory source's contents land in its destination."""
        found = None
        for instruction, copy in self.copies():
            if instruction.line >= before.line:
                break
            source = copy.source.strip("/") or "."
            if (context / source).is_dir():
                if path == copy.destination or path.startswith(copy.destination + "/"):
                    found = posixpath.normpath(
                        posixpath.join(source, path[len(copy.destination) :].lstrip("/"))
                    )
            else:
                name = posixpath.basename(source)
                target = (
                    posixpath.join(copy.destination, name)
                    if copy.into_directory
                    else copy.destination
                )
                if path == target:
                    found = source
        return found

    def commands(self) -> list[tuple[Instruction, Command]]:
        return [(i, c) for i in self.of("RUN") for c in shell_commands(i.args[0])]

    def user(self) -> str | None:
        users = self.of("USER")
        return users[-1].args[0] if users else None


@dataclass
class Dockerfile:
    args: dict[str, str]  # ARG defaults declared before the first FROM
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        [stage] = [s for s in self.stages if s.name == name]
        return stage


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each instruction: continuations joined, comments and
    blank lines dropped (a comment line inside a continued instruction too, as Docker does)."""
    out: list[tuple[int, str]] = []
    current: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not current and not stripped):
            continue
        if not current:
            start = number
        if raw.rstrip().endswith("\\"):
            current.append(raw.rstrip()[:-1])
            continue
        current.append(raw)
        out.append((start, "".join(current).strip()))
        current = []
    if current:
        raise ValueError(f"line {start}: the last instruction ends with a continuation")
    return out


def substitute(value: str, args: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in args:
            raise ValueError(f"${{{name}}} has no value (no ARG default)")
        return args[name]

    return _VARIABLE.sub(one, value)


def _flags(words: list[str]) -> tuple[dict[str, str], list[str]]:
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    return flags, words


def parse(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, body in logical_lines(text):
        keyword, _, rest = body.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "RUN":
            if rest.startswith("["):
                raise ValueError(f"line {line}: RUN in exec form is not read here")
            instruction = Instruction(keyword, {}, [rest], line)
        elif keyword in ("COPY", "ADD"):
            flags, words = _flags(rest.split())
            joined = " ".join(words)
            args = json.loads(joined) if joined.startswith("[") else words
            if len(args) < 2:
                raise ValueError(f"line {line}: {keyword} needs a source and a destination")
            instruction = Instruction(keyword, flags, args, line)
        elif keyword in ("CMD", "ENTRYPOINT") and rest.startswith("["):
            instruction = Instruction(keyword, {}, json.loads(rest), line)
        else:
            flags, words = (
                _flags(shlex.split(rest)) if keyword == "FROM" else ({}, shlex.split(rest))
            )
            instruction = Instruction(keyword, flags, words, line)
        if keyword == "FROM":
            words = instruction.args
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(substitute(words[0], global_args), name, [instruction]))
        elif not stages:
            if keyword != "ARG":
                raise ValueError(f"line {line}: {keyword} before the first FROM")
            for word in instruction.args:
                key, _, default = word.partition("=")
                global_args[key] = default
        else:
            stages[-1].instructions.append(instruction)
    if not stages:
        raise ValueError("no FROM: not a Dockerfile")
    return Dockerfile(global_args, stages)


def arg_default(stage: Stage, dockerfile: Dockerfile, name: str) -> str:
    """A build argument's default as the stage sees it (its own ARG line, else the global)."""
    for i in stage.of("ARG"):
        key, equals, default = i.args[0].partition("=")
        if key == name and equals:
            return default
    return dockerfile.args[name]


def env_of(stage: Stage) -> dict[str, str]:
    """The stage's ENV, values as written (`$PATH`-style references kept)."""
    env: dict[str, str] = {}
    for i in stage.of("ENV"):
        for word in i.args:
            key, _, value = word.partition("=")
            env[key] = value
    return env


def shell_commands(script: str) -> list[Command]:
    """The simple commands of a shell line: split at && || ; | &, braces and subshell
    parentheses dropped, redirections (with their targets) dropped, leading VAR=value
    words taken as the command's environment. Quoting as the shell reads it; `$(...)` is
    kept whole inside its (quoted) word."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|<>()")
    lexer.whitespace_split = True
    commands: list[Command] = []
    words: list[str] = []
    tokens = list(lexer)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in _OPERATORS:
            commands.append(_command(words))
            words = []
        elif token in _REDIRECTIONS:
            if words and words[-1].isdigit():
                words.pop()  # 2>/dev/null: the descriptor goes with the redirection
            i += 1  # and so does its target
        elif token not in ("{", "}", "(", ")"):
            words.append(token)
        i += 1
    commands.append(_command(words))
    return [c for c in commands if c.argv or c.env]


def _command(words: list[str]) -> Command:
    env: dict[str, str] = {}
    while words and _ASSIGNMENT.match(words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return Command(env, words)


@dataclass(frozen=True)
class PipInstall:
    """One `pip install` of a RUN line, by what it was told."""

    command: Command
    options: frozenset[str]  # flags without a value: --no-deps, --no-build-isolation
    constraints: tuple[str, ...]  # -c FILE
    requirements: tuple[str, ...]  # -r FILE
    index_url: str | None
    targets: tuple[str, ...]  # requirement specifiers and local project paths


_PIP_VALUED = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url",
               "--extra-index-url", "--target", "-t", "-e", "--editable"}  # fmt: skip


def pip_install(command: Command) -> PipInstall | None:
    argv = command.argv
    if len(argv) >= 3 and argv[1:3] == ["-m", "pip"]:
        argv = argv[2:]
    if len(argv) < 2 or posixpath.basename(argv[0]) not in ("pip", "pip3") or argv[1] != "install":
        return None
    options: set[str] = set()
    valued: dict[str, list[str]] = {}
    targets: list[str] = []
    words = iter(argv[2:])
    for word in words:
        key, equals, value = word.partition("=")
        if key in _PIP_VALUED:
            valued.setdefault(key, []).append(value if equals else next(words))
        elif word.startswith("-"):
            options.add(word)
        else:
            targets.append(word)
    indexes = valued.get("--index-url", []) + valued.get("-i", [])
    return PipInstall(
        command,
        frozenset(options),
        tuple(valued.get("-c", []) + valued.get("--constraint", [])),
        tuple(valued.get("-r", []) + valued.get("--requirement", [])),
        indexes[-1] if indexes else None,
        tuple(targets),
    )


def pip_installs(stage: Stage) -> list[tuple[Instruction, PipInstall]]:
    found = [(i, pip_install(c)) for i, c in stage.commands()]
    return [(i, p) for i, p in found if p is not None]
