"""Generate the FineTuneJob CustomResourceDefinition from the pydantic models.

Kubernetes wants a *structural* OpenAPI v3 schema: no `$ref`, no `anyOf` of types, a
type on every node (or an explicit int-or-string / preserve-unknown-fields marker),
boolean `exclusiveMinimum`. Pydantic emits JSON Schema 2020-12; this module translates,
then attaches the rule table (maap_api.rules) as CEL to the section each rule is for.
"""

from __future__ import annotations

from typing import Any

import yaml
from maap_api.finetunejob import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    FineTuneJobSpec,
    FineTuneJobStatus,
)
from maap_api.rules import RULES

# Keys that survive translation unchanged.
_PASSTHROUGH = {
    "type",
    "description",
    "enum",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "required",
    "default",
    "nullable",
}

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Method", "type": "string", "jsonPath": ".spec.method.type"},
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.preset"},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress.percent", "priority": 0},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


class SchemaError(ValueError):
    """The pydantic schema uses a construct the CRD cannot express."""


_VALIDATIONS = "x-kubernetes-validations"


def _merge(target: dict[str, Any], siblings: dict[str, Any]) -> dict[str, Any]:
    """Siblings override the referenced schema, except CEL rules, which add up."""
    merged = {**target, **siblings}
    if _VALIDATIONS in target and _VALIDATIONS in siblings:
        merged[_VALIDATIONS] = target[_VALIDATIONS] + siblings[_VALIDATIONS]
    return merged


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline `$ref` and single-element `allOf`, keeping sibling keys (description...)."""
    while True:
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            node = _merge(target, {k: v for k, v in node.items() if k != "$ref"})
        elif "allOf" in node and len(node["allOf"]) == 1:
            node = _merge(node["allOf"][0], {k: v for k, v in node.items() if k != "allOf"})
        else:
            return node


def structural(node: dict[str, Any], defs: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Translate one pydantic JSON-schema node into a Kubernetes structural schema node."""
    node = _resolve(node, defs)
    if "anyOf" in node:
        options = [_resolve(o, defs) for o in node["anyOf"] if o.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if rest.get("default", 0) is None:
            del rest["default"]
        types = sorted(o.get("type", "") for o in options)
        if types == ["integer", "string"]:
            out = {"x-kubernetes-int-or-string": True}
            if "description" in rest:
                out["description"] = rest["description"]
            return out
        if len(options) != 1:
            raise SchemaError(f"{path or '<root>'}: a union of {types} has no CRD form")
        return structural({**options[0], **rest}, defs, path)

    out: dict[str, Any] = {}
    if "const" in node:
        out["enum"] = [node["const"]]
    for key, value in node.items():
        if key in _PASSTHROUGH or key.startswith("x-kubernetes-"):
            out[key] = value
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
    if "enum" in out and "type" not in out:
        out["type"] = "string" if all(isinstance(v, str) for v in out["enum"]) else "integer"
    if out.get("type") == "string" and "enum" in out:
        # Bounds the CEL cost estimate of rules and messages that read the value.
        out.setdefault("maxLength", max(len(v) for v in out["enum"]))

    kind = node.get("type")
    if kind == "object" or "properties" in node:
        out["type"] = "object"
        if "properties" in node:
            out["properties"] = {
                name: structural(sub, defs, f"{path}.{name}")
                for name, sub in node["properties"].items()
            }
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = structural(extra, defs, f"{path}[*]")
        elif extra is True or (extra == {} and "properties" not in node):
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        out["items"] = structural(node.get("items", {}), defs, f"{path}[]")
    elif kind is None and "enum" not in out and "x-kubernetes-int-or-string" not in out:
        # `Any`: accept whatever the user writes, keep it verbatim.
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _section(model: type) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    defs = schema.pop("$defs", {})
    return structural(schema, defs)


def _default_sub_objects(node: dict[str, Any]) -> dict[str, Any]:
    """Give optional sub-objects `default: {}` so the API server fills in nested defaults.

    Without it, `kubectl get -o yaml` would show only what the user wrote, and the
    operator would see a different spec than the one the CLI validates.
    """
    required = set(node.get("required", []))
    for name, sub in node.get("properties", {}).items():
        if "properties" in sub:
            _default_sub_objects(sub)
            if name not in required:
                sub.setdefault("default", {})
    return node


def section_schema(model: type, defaults: bool = True) -> dict[str, Any]:
    """A model's structural schema, with the rule table's CEL for its sections (and nested
    defaults, for a spec)."""
    schema = _section(model)
    return attach_rules(_default_sub_objects(schema), strict=False) if defaults else schema


def attach_rules(spec: dict[str, Any], strict: bool = True) -> dict[str, Any]:
    """Add each API rule of the table to its section's `x-kubernetes-validations`.

    `strict`: the spec is the FineTuneJob's, holding every section; otherwise another
    kind's spec (CachedModel) gets the rules of the sections it holds."""
    for rule in RULES:
        if not rule.in_crd or (not strict and not rule.section):
            continue
        node: dict[str, Any] | None = spec
        for part in filter(None, rule.section.split(".")):
            if part not in node.get("properties", {}):
                if strict:
                    raise SchemaError(f"rule {rule.name}: spec has no section {rule.section}")
                node = None
                break
            node = node["properties"][part]
        if node is not None:
            node.setdefault(_VALIDATIONS, []).append(rule.validation(node))
    return spec


def openapi_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "A fine-tune of an open model: train, export to ONNX, serve.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": attach_rules(_default_sub_objects(_section(FineTuneJobSpec))),
            "status": _section(FineTuneJobStatus),
        },
    }


def crd_document(
    kind: str,
    plural: str,
    singular: str,
    short_names: list[str],
    columns: list[dict[str, Any]],
    schema: dict[str, Any],
) -> dict[str, Any]:
    """A namespaced maap CRD of one served version with a status subresource."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "maap", "app.kubernetes.io/part-of": "maap"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": short_names,
                "categories": ["maap"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def build_crd() -> dict[str, Any]:
    return crd_document(KIND, PLURAL, SINGULAR, SHORT_NAMES, PRINTER_COLUMNS, openapi_schema())


def render_crd() -> str:
    header = (
        "# Generated by `maap crd` from the pydantic models in api/maap_api/finetunejob.py.\n"
        "# Do not edit by hand: run `make crd`. A test fails when this file drifts.\n"
    )
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


__all__ = ["API_VERSION", "build_crd", "openapi_schema", "render_crd"]
