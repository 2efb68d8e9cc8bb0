"""The rule table's entries for locations: which forms each location field accepts.

Part of maap_api.rules.RULES; the patterns come from maap_api.sources.
"""

from __future__ import annotations

from typing import Any

from maap_api.rule import Rule
from maap_api.sources import (
    DATASET_FORMS,
    DATASET_PATTERNS,
    MODEL_FORMS,
    MODEL_PATTERNS,
    OUTPUT_FORMS,
    OUTPUT_PATTERNS,
    cel_valid_location,
    valid_location,
)


def _location_rule(
    section: str,
    field: str,
    patterns: tuple[str, ...],
    forms: str,
    example: str,
    also: dict[str, Any] | None = None,
    paths: bool = True,
) -> Rule:
    return Rule(
        name=f"{section}-{field}-form".lower(),
        section=section,
        field=f"{section}.{field}",
        message=f"{section}.{field}: unknown scheme or malformed location; use {forms}",
        check=lambda m: valid_location(getattr(m, _snake(field)), patterns, paths),
        cel=cel_valid_location(field, patterns, paths),
        # `also`: what else the example must change to break only this rule (None: unset).
        example={section: {field: example, **(also or {})}},
        reason="FieldValueInvalid",
    )


def _snake(camel: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)


SOURCE_RULES: list[Rule] = [
    _location_rule("dataset", "path", DATASET_PATTERNS, DATASET_FORMS, "ftp://host/data.jsonl"),
    _location_rule(
        "dataset", "evalPath", DATASET_PATTERNS, DATASET_FORMS, "gs://bucket/eval.jsonl"
    ),
    _location_rule(
        "model", "path", MODEL_PATTERNS, MODEL_FORMS, "hf://just-a-name", {"preset": None}
    ),
    _location_rule("output", "path", OUTPUT_PATTERNS, OUTPUT_FORMS, "/local/dir", paths=False),
]
