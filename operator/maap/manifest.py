"""Read a FineTuneJob manifest; every validation failure becomes a readable line naming the
field (maap_api.field_errors formats them, as for every other caller)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from maap_api.field_errors import field_errors
from maap_api.field_errors import format_validation_error as _format
from maap_api.finetunejob import FineTuneJob
from pydantic import BaseModel, ValidationError


class ManifestError(ValueError):
    """A manifest that cannot be used; each problem names the field and what is valid."""

    def __init__(self, *problems: str, source: str = "") -> None:
        self.problems, self.source = list(problems), source
        super().__init__((f"{source}: " if source else "") + "; ".join(problems))

    def lines(self) -> list[str]:
        """One line per problem, each naming the file (for `maap validate`)."""
        return [f"{self.source}: {p}" if self.source else p for p in self.problems]


def format_validation_error(exc: ValidationError, root: type[BaseModel] = FineTuneJob) -> str:
    """One line for all problems: `spec.method.type: ... (got 'banana'); ...`."""
    return _format(exc, root)


def parse_manifest(document: Any) -> FineTuneJob:
    if not isinstance(document, dict):
        raise ManifestError("a FineTuneJob manifest must be a YAML mapping")
    try:
        return FineTuneJob.model_validate(document)
    except ValidationError as exc:
        raise ManifestError(*map(str, field_errors(exc.errors(), FineTuneJob))) from None


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
        raise ManifestError(*exc.problems, source=str(path)) from None
