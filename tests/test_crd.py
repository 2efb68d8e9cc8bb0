"""The CRD is generated from the pydantic models; the committed file must not drift."""

from __future__ import annotations

from typing import Any

import yaml
from maap.crd import build_crd, render_crd

from tests.conftest import REPO

CRD_FILE = REPO / "crds" / "finetunejobs.maap.dev.yaml"


def test_committed_crd_matches_the_models() -> None:
    assert CRD_FILE.read_text() == render_crd(), (
        "crds/ drifted from api/maap_api/finetunejob.py: run `make crd` and commit the result"
    )


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, sub in node.get("properties", {}).items():
            found += _walk(sub, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            found += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            found += _walk(node["additionalProperties"], f"{path}[*]")
    return found


def test_schema_is_structural() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    text = yaml.safe_dump(schema)
    for forbidden in ("$ref", "anyOf", "allOf", "oneOf", "title:", "const:", "$defs"):
        assert forbidden not in text, forbidden
    for path, node in _walk(schema):
        marked = node.get("x-kubernetes-int-or-string") or node.get(
            "x-kubernetes-preserve-unknown-fields"
        )
        assert "type" in node or marked, f"{path} has no type"
        if "properties" in node:
            assert node.get("additionalProperties") is None, f"{path}: properties + additional"
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node


def test_crd_names_columns_and_status() -> None:
    crd = build_crd()
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "FineTuneJob",
        "finetunejobs",
        ["ftj"],
    )
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Method"] == ".spec.method.type"
    assert columns["Model"] == ".spec.model.preset"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_schema_carries_validation_that_the_models_do() -> None:
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert set(spec["required"]) == {"model", "dataset"}
    method = spec["properties"]["method"]["properties"]["type"]
    assert method["enum"] == ["lora", "qlora", "dora", "full"]
    model = spec["properties"]["model"]
    rules = [v["rule"] for v in model["x-kubernetes-validations"]]
    assert "has(self.preset) != has(self.path)" in rules
    # Optional sub-objects default to {} so the API server fills nested defaults.
    assert spec["properties"]["training"]["default"] == {}
    assert spec["properties"]["training"]["properties"]["learningRate"]["default"] == 2e-4
    requests = spec["properties"]["resources"]["properties"]["requests"]
    assert requests["additionalProperties"] == {"x-kubernetes-int-or-string": True}
    tolerations = spec["properties"]["placement"]["properties"]["tolerations"]
    assert tolerations["items"]["x-kubernetes-preserve-unknown-fields"] is True


def test_training_inputs_are_immutable_but_serving_is_not() -> None:
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for name in ("model", "dataset", "method", "training", "deepspeed", "export", "storage"):
        rules = [v["rule"] for v in spec["properties"][name].get("x-kubernetes-validations", [])]
        assert "self == oldSelf" in rules, name
    for name in ("serving", "placement", "suspend"):
        rules = spec["properties"][name].get("x-kubernetes-validations", [])
        assert all(r["rule"] != "self == oldSelf" for r in rules), name
    # A field-level rule adds to the model's own rules instead of replacing them.
    model_rules = [v["rule"] for v in spec["properties"]["model"]["x-kubernetes-validations"]]
    assert "has(self.preset) != has(self.path)" in model_rules


def test_cross_section_rules_sit_on_the_spec() -> None:
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = {v["fieldPath"]: v for v in spec.get("x-kubernetes-validations", [])}
    assert "qlora keeps frozen 4-bit" in rules[".method.type"]["message"]
    # Values in a message come from the enum, so the cost estimate stays bounded.
    assert '"token-classification"' in rules[".dataset.format"]["messageExpression"]
    assert set(rules) >= {".dataset.format", ".training.task", ".method.lora.init"}


def test_enum_strings_are_bounded() -> None:
    # CEL's cost estimate of a rule that reads a string depends on its maxLength.
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    task = spec["properties"]["training"]["properties"]["task"]
    assert task["maxLength"] == len("token-classification")


def test_cached_model_crd_matches_its_models_and_carries_the_model_rules() -> None:
    from maap.cachedmodel_crd import build_cached_model_crd, render_cached_model_crd

    committed = CRD_FILE.with_name("cachedmodels.maap.dev.yaml")
    assert committed.read_text() == render_cached_model_crd(), "crds/ drifted: run `make crd`"
    version = build_cached_model_crd()["spec"]["versions"][0]
    model = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["model"]
    rules = [v["rule"] for v in model["x-kubernetes-validations"]]
    assert "has(self.preset) != has(self.path)" in rules
    assert any("matches" in rule for rule in rules)  # the location grammar
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Size", "Location"} <= columns
