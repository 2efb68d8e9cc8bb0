"""A pydantic ValidationError as readable lines that name the field, for every caller.

The CLI (`spec.method.lora.init: ...`), the stages (config.json), the server's flags
(`--max-batch-size: ...`) and its HTTP errors (OpenAI's `param`, `messages.0.content`)
all format errors here. Pydantic only, so both planes use it.
"""

from __future__ import annotations

import re
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from maap_api.rules import RULE_ERROR

# path: spec.method.lora.init, items[0].name; flag: --max-batch-size; param: input.0
Style = Literal["path", "flag", "param"]
_MAX_SHOWN = 60


@dataclass(frozen=True)
class FieldError:
    field: str  # "" when the whole document is wrong
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


def _where(loc: Sequence[int | str], style: Style) -> str:
    if style == "flag":
        words = [re.sub(r"(?<!^)(?=[A-Z])", "-", str(p)).replace("_", "-").lower() for p in loc]
        return "--" + "-".join(words) if words else ""
    if style == "param":
        return ".".join(str(p) for p in loc)
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(model: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
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


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def field_errors(
    errors: Sequence[ErrorDetails],
    root: type[BaseModel] | None = None,
    *,
    style: Style = "path",
    skip: Container[str] = (),
) -> list[FieldError]:
    """One FieldError per problem; `root` lets an unknown field list the valid ones, `skip`
    drops location parts that are no field (FastAPI's `body`, union branch names)."""
    out = []
    for err in errors:
        loc = tuple(p for p in err["loc"] if isinstance(p, int) or p not in skip)
        kind = err["type"]
        if kind == RULE_ERROR:
            # The message names the rule's field from the spec root; the location says
            # where that field is in this document.
            named = err.get("ctx", {}).get("field", "")
            msg = err["msg"].removeprefix(f"{named}: ")
        elif kind == "extra_forbidden":
            parent = _model_at(root, loc[:-1]) if root else None
            valid = (
                ", ".join(f.alias or n for n, f in parent.model_fields.items()) if parent else ""
            )
            msg = "unknown field" + (f" (valid fields: {valid})" if valid else "")
        elif kind == "missing":
            msg = "required field is missing"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if "input" in err and not isinstance(err["input"], dict | list | BaseModel):
                msg += f" (got {_shown(err['input'])})"
        out.append(FieldError(_where(loc, style), msg))
    return out


def format_validation_error(
    exc: ValidationError, root: type[BaseModel] | None = None, *, style: Style = "path"
) -> str:
    """Every problem on one line: `spec.method.type: ... (got 'banana'); spec.x: ...`."""
    return "; ".join(str(e) for e in field_errors(exc.errors(), root, style=style))
