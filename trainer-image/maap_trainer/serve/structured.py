"""Structured outputs: `response_format` as a grammar the engine enforces token by token.

ONNX Runtime GenAI's guidance (llguidance) masks every token that would leave the grammar,
so a json_schema answer parses and validates whenever it ends on its own (not cut off by
max_tokens). json_object is the schema of any object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema: required when type is json_schema")
        return self


@dataclass(frozen=True)
class Guidance:
    """A grammar for ONNX Runtime GenAI: its kind ('json_schema', 'regex', 'lark_grammar')
    and text, and the request parameter it came from (named in errors)."""

    kind: str
    text: str
    param: str


# llguidance's JSON layout: with the default flexible whitespace a small model can emit
# newlines forever inside "{" (seen: 120 tokens of them); one space after ":" and ",".
LAYOUT = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


def enforced(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as the grammar is built from it: the layout fixed, unless it says its own."""
    return schema if "x-guidance" in schema else {**schema, "x-guidance": LAYOUT}


def response_guidance(response_format: ResponseFormat | None) -> Guidance | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return Guidance("json_schema", json.dumps(enforced({"type": "object"})), "response_format")
    assert response_format.json_schema is not None
    schema = enforced(response_format.json_schema.schema_ or {"type": "object"})
    return Guidance("json_schema", json.dumps(schema), "response_format.json_schema.schema")


def json_instruction(response_format: ResponseFormat | None) -> str | None:
    """A system line telling the model what the grammar will hold it to: a model that
    does not know it must answer JSON spends tokens fighting the mask."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return "Answer with a single JSON object."
    assert response_format.json_schema is not None
    spec = response_format.json_schema
    about = f" ({spec.description})" if spec.description else ""
    return f"Answer with a single JSON object{about} that follows this JSON schema: " + json.dumps(
        spec.schema_ or {"type": "object"}, ensure_ascii=False
    )
