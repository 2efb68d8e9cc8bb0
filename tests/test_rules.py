"""The rule table (maap_api.rules) is the only place cross-field rules live, pydantic
enforces every rule in it, and the CRD carries every API rule as CEL at its section.

tests/controlplane/test_trainer_rules.py sends each rule's example through `maap validate`
and a real API server; this file checks the table and both enforcers without a cluster."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml
from maap.crd import build_crd
from maap.manifest import ManifestError, parse_manifest
from maap_api.field_errors import field_errors
from maap_api.finetunejob import FineTuneJob, FineTuneJobSpec
from maap_api.rules import RULES, Rule, rules_for
from maap_api.stage_config import CamelModel, TrainerConfig
from pydantic import BaseModel, ValidationError

from tests.test_api import MINIMAL

API_RULES = [r for r in RULES if r.in_crd]
POD_RULES = [r for r in RULES if not r.in_crd]


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` merged in; a None value removes the key."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def breaking(rule: Rule) -> dict[str, Any]:
    """The minimal valid FineTuneJob with the rule's example applied."""
    return {**MINIMAL, "spec": merged(MINIMAL["spec"], rule.example)}


def message_pattern(rule: Rule) -> re.Pattern[str]:
    """The rule's message with each {field} value standing for any word."""
    parts = re.split(r"\{[\w.]+\}", rule.message)
    return re.compile(r"[\w.-]+".join(re.escape(p) for p in parts))


def _models(root: type[BaseModel], seen: set[type[BaseModel]]) -> set[type[BaseModel]]:
    if root in seen:
        return seen
    seen.add(root)
    for info in root.model_fields.values():
        stack = [info.annotation]
        while stack:
            kind = stack.pop()
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                _models(kind, seen)
            stack += list(getattr(kind, "__args__", ()))
    return seen


@pytest.mark.parametrize("root", [FineTuneJobSpec, TrainerConfig])
def test_no_validator_outside_the_table(root: type[BaseModel]) -> None:
    # A validator written beside the table would check in pydantic what CEL never sees
    # (the spec is what users write; the status is the operator's).
    for model in _models(root, set()):
        decorators = model.__pydantic_decorators__
        assert set(decorators.model_validators) <= {"_check_rules"}, model.__name__
        assert not decorators.field_validators, model.__name__
        assert not decorators.root_validators, model.__name__
        assert not decorators.validators, model.__name__
        if issubclass(model, CamelModel):
            continue
        assert not decorators.model_validators, model.__name__


def test_every_section_of_a_rule_has_a_model() -> None:
    sections = {
        (m.rules_section, m.rules_plane)
        for root in (FineTuneJob, TrainerConfig)
        for m in _models(root, set())
        if issubclass(m, CamelModel) and m.rules_section is not None
    }
    assert ("", "api") in sections and ("", "pod") in sections
    assert FineTuneJobSpec.rules_section == "" and TrainerConfig.rules_section == ""
    for rule in RULES:
        planes = {"api", "pod"} if rule.plane == "both" else {rule.plane}
        for plane in planes:
            assert (rule.section, plane) in sections or (rule.section, "both") in sections, (
                rule.name,
                plane,
            )
        shared = (rule.section, "both") in sections
        assert not shared or rule.plane == "both", f"{rule.name}: a shared section, one plane"


def test_rules_are_well_formed() -> None:
    assert len({r.name for r in RULES}) == len(RULES)
    for rule in RULES:
        assert rule.message.startswith(f"{rule.field}: "), rule.name
        assert "\n" not in rule.message, rule.name
        assert rule.field == rule.section or rule.field.startswith(
            f"{rule.section}." if rule.section else ""
        )
        if rule.in_crd:
            assert rule.cel_expression(), rule.name


@pytest.mark.parametrize("rule", API_RULES, ids=lambda r: r.name)
def test_pydantic_reports_each_api_rule_at_its_field(rule: Rule) -> None:
    with pytest.raises(ManifestError) as err:
        parse_manifest(breaking(rule))
    # The example breaks this rule and nothing else.
    assert len(err.value.problems) == 1, err.value.problems
    problem = err.value.problems[0]
    assert problem.startswith(f"spec.{rule.field}: "), problem
    assert message_pattern(rule).fullmatch(problem.removeprefix("spec.")), problem


@pytest.mark.parametrize("rule", POD_RULES, ids=lambda r: r.name)
def test_pydantic_reports_each_pod_rule_at_its_field(rule: Rule) -> None:
    config = merged(
        {"jobName": "t", "outputDir": "/out", **copy.deepcopy(MINIMAL["spec"])}, rule.example
    )
    with pytest.raises(ValidationError) as err:
        TrainerConfig.model_validate(config)
    problems = [str(e) for e in field_errors(err.value.errors(), TrainerConfig)]
    assert problems == [rule.message], problems


def test_the_base_spec_breaks_no_rule() -> None:
    job = parse_manifest(MINIMAL)
    for section, plane in (("", "api"), ("method", "both"), ("method.lora", "both")):
        assert rules_for(section, plane)
    cfg = job.spec.trainer_config("demo", "/out")
    assert TrainerConfig.model_validate(cfg.to_json_dict()) == cfg


def _node(spec: dict[str, Any], section: str) -> dict[str, Any]:
    for part in filter(None, section.split(".")):
        spec = spec["properties"][part]
    return spec


@pytest.mark.parametrize("rule", API_RULES, ids=lambda r: r.name)
def test_the_crd_carries_each_api_rule_at_its_section(rule: Rule) -> None:
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    node = _node(spec, rule.section)
    entry = rule.validation(node)
    assert entry in node.get("x-kubernetes-validations", [])
    text = entry.get("message") or entry["messageExpression"]
    assert text.startswith((rule.field, f'"{rule.field}'))


def test_no_crd_rule_outside_the_table() -> None:
    # Every CEL rule of the spec comes from the table, except the immutability rules.
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    table = [r.validation(_node(spec, r.section)) for r in API_RULES]
    found = []

    def walk(node: dict[str, Any]) -> None:
        found.extend(node.get("x-kubernetes-validations", []))
        for sub in node.get("properties", {}).values():
            walk(sub)
        if isinstance(node.get("items"), dict):
            walk(node["items"])

    walk(spec)
    others = [v for v in found if v not in table]
    assert all(v["rule"] == "self == oldSelf" for v in others), others
    assert len(found) - len(others) == len(table)


def test_validate_prints_one_line_per_broken_rule(tmp_path) -> None:
    from maap.cli import app
    from typer.testing import CliRunner

    loftq = next(r for r in RULES if r.name == "loftq-rslora")
    two = merged(breaking(loftq), {"spec": {"export": {"precision": "fp16"}}})
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(two))
    result = CliRunner().invoke(app, ["validate", str(manifest)])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines == [
        f"error: {manifest}: spec.method.lora.rslora: LoftQ initialisation assumes the standard "
        "alpha/r scaling; drop rslora or pick another init",
        f"error: {manifest}: spec.export.precision: fp16 needs executionProvider cuda; the ONNX "
        "Runtime GenAI builder builds fp16 for CUDA only (on cpu use fp32, int8 or int4)",
    ], lines
