"""The base of every API model: Kubernetes-style camelCase, strict, with the rule table."""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel

from maap_api.rules import Plane, enforce


class CamelModel(BaseModel):
    """Kubernetes-style camelCase fields; unknown fields are an error, never ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    # Where the model sits in the spec ("" is the root), for the rule table; None: no rules.
    rules_section: ClassVar[str | None] = None
    # "both" for the sections both planes share; "api" or "pod" for one plane's models.
    rules_plane: ClassVar[Plane] = "both"

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        """The only validator across fields: the rule table's, for this model's section."""
        if self.rules_section is not None:
            enforce(self, self.rules_section, self.rules_plane)
        return self

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
