"""One rule of the FineTuneJob API's rule table (maap_api.rules): its field, message,
Python check and CEL, and how it renders into the CRD.

Apart from the table, so that rule modules (maap_api.source_rules) build on it without
importing the table they are part of. Pydantic and the standard library only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

# The pydantic error type of a broken rule; ctx["field"] is the field it names.
RULE_ERROR = "rule"
Plane = Literal["both", "api", "pod"]


@dataclass(frozen=True)
class Rule:
    name: str
    section: str  # where it applies: "" is the spec root (and TrainerConfig), else "method.lora"
    field: str  # the field it names, from the spec root
    message: str  # "<field>: ...", with optional {relative.field} values
    check: Callable[[Any], bool]  # the section's model -> True when the rule holds
    cel: str | Callable[[], str] | None  # None only for plane "pod"
    example: dict[str, Any]  # spec changes that break this rule (and only this one)
    reason: str = "FieldValueForbidden"
    plane: Plane = "both"  # "pod": only the data plane's config has these fields

    @property
    def in_crd(self) -> bool:
        return self.plane != "pod"

    def cel_expression(self) -> str:
        expr = self.cel() if callable(self.cel) else self.cel
        if expr is None:
            raise ValueError(f"rule {self.name}: no CEL expression")
        return expr

    def relative_field(self) -> tuple[str, ...]:
        """The field's location below the section (empty when the rule names the section)."""
        if self.field == self.section:
            return ()
        prefix = f"{self.section}." if self.section else ""
        if not self.field.startswith(prefix):
            raise ValueError(f"rule {self.name}: {self.field} is not inside {self.section!r}")
        return tuple(self.field.removeprefix(prefix).split("."))

    def render(self, model: BaseModel) -> str:
        return re.sub(r"\{([\w.]+)\}", lambda m: str(value_at(model, m.group(1))), self.message)

    def validation(self, schema: dict[str, Any]) -> dict[str, Any]:
        """This rule as one `x-kubernetes-validations` entry of its section's `schema`."""
        entry: dict[str, Any] = {"rule": self.cel_expression()}
        if "{" in self.message:
            entry["messageExpression"] = _message_expression(self.message, schema)
        else:
            entry["message"] = self.message
        if relative := self.relative_field():
            entry["fieldPath"] = "." + ".".join(relative)
        entry["reason"] = self.reason
        return entry


def value_at(model: Any, path: str) -> Any:
    """The value at a camelCase path below `model` (`lora.init`)."""
    for part in path.split("."):
        fields = type(model).model_fields
        name = next(n for n, f in fields.items() if part in (n, f.alias))
        model = getattr(model, name)
    return model


def _message_expression(template: str, schema: dict[str, Any]) -> str:
    """CEL that builds the message: literals, and each {field} as a choice among its enum's
    values (concatenating the value itself would make the API server's cost estimate of an
    unbounded string exceed its budget)."""
    pieces = []
    for i, part in enumerate(re.split(r"\{([\w.]+)\}", template)):
        if i % 2 == 0:
            if part:
                pieces.append(json.dumps(part))
            continue
        node = schema
        for name in part.split("."):
            node = node["properties"][name]
        if "enum" not in node:
            raise ValueError(f"message value {{{part}}}: the field has no enum")
        *first, last = node["enum"]
        choice = json.dumps(str(last))
        for value in reversed(first):
            choice = f"self.{part} == {_cel_literal(value)} ? {json.dumps(str(value))} : {choice}"
        pieces.append(f"({choice})")
    return " + ".join(pieces)


def _cel_literal(value: Any) -> str:
    return json.dumps(value)  # JSON strings, numbers, lists and booleans are CEL literals
