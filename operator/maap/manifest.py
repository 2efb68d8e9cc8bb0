"""Read a FineTuneJob manifest and turn every validation failure into one readable line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from maap.api import FineTuneJob


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the field and what is valid."""


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<document>"


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """Follow `loc` through nested pydantic models, to list valid field names."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = next(
            (f for name, f in current.model_fields.items() if part in (name, f.alias)), None
        )
        if field is None:
            return None
        annotation = field.annotation
        # Unwrap `X | None` and list[X].
        for arg in getattr(annotation, "__args__", ()) or ():
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                annotation = arg
        current = annotation
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def format_validation_error(exc: ValidationError, root: type[BaseModel] = FineTuneJob) -> str:
    """One line per problem: `spec.method.type: ... (got 'banana')`."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = _field_path(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = _model_at(root, loc[:-1])
            valid = (
                ", ".join(f.alias or n for n, f in parent.model_fields.items()) if parent else ""
            )
            msg = "unknown field" + (f" (valid fields: {valid})" if valid else "")
        elif kind == "missing":
            msg = "required field is missing"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if "input" in err and not isinstance(err["input"], dict | list):
                msg += f" (got {err['input']!r})"
        lines.append(f"{path}: {msg}")
    return "; ".join(lines)


def parse_manifest(document: Any) -> FineTuneJob:
    if not isinstance(document, dict):
        raise ManifestError("a FineTuneJob manifest must be a YAML mapping")
    try:
        return FineTuneJob.model_validate(document)
    except ValidationError as exc:
        raise ManifestError(format_validation_error(exc)) from None


def load_manifest(path: Path) -> FineTuneJob:
    """Load the single FineTuneJob in `path` (the file a user would `kubectl apply`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(f"{path}:{where}: invalid YAML: {problem}") from None
    jobs = [d for d in documents if isinstance(d, dict) and d.get("kind") == "FineTuneJob"]
    if len(jobs) != 1:
        raise ManifestError(f"{path}: expected exactly one FineTuneJob document, found {len(jobs)}")
    try:
        return parse_manifest(jobs[0])
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from None
