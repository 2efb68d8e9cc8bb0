"""The FineTuneJob API: defaults, validation, and error text that names the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from maap.builders import SERVING_TOKEN_ENV, OperatorSettings, build_serving_deployment
from maap.manifest import ManifestError, load_manifest, parse_manifest
from maap_api.finetunejob import FineTuneJob

from tests.conftest import EXAMPLE_MANIFEST

MINIMAL: dict[str, Any] = {
    "apiVersion": "maap.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "demo"},
    "spec": {
        "model": {"preset": "smollm2-135m-instruct"},
        "dataset": {"path": "data.jsonl"},
    },
}


def with_spec(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(MINIMAL)
    doc["spec"].update(changes)
    return doc


def test_minimal_manifest_gets_sensible_defaults() -> None:
    job = parse_manifest(MINIMAL)
    spec = job.spec
    assert spec.method.type == "lora"
    assert spec.method.lora.r == 16
    assert spec.method.lora.target_modules == ["all-linear"]
    assert spec.training.learning_rate == 2e-4
    assert spec.dataset.format == "auto"
    assert spec.export.precision == "int4"
    assert spec.serving.enabled and spec.serving.port == 8000 and spec.serving.replicas == 1
    assert spec.deepspeed.enabled is False


def test_example_manifest_is_valid() -> None:
    job = load_manifest(EXAMPLE_MANIFEST)
    assert job.metadata.name == "smollm2-pirate"
    assert job.spec.model.preset == "smollm2-135m-instruct"


def test_camel_case_round_trip() -> None:
    job = parse_manifest(with_spec(training={"learningRate": 1e-4, "maxSteps": 10}))
    dumped = job.to_json_dict()
    assert dumped["spec"]["training"]["learningRate"] == 1e-4
    assert dumped["spec"]["training"]["maxSteps"] == 10
    assert FineTuneJob.model_validate(dumped) == job


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (with_spec(method={"type": "banana"}), "spec.method.type: Input should be 'lora'"),
        (with_spec(method={"type": "banana"}), "(got 'banana')"),
        (with_spec(trainig={}), "spec.trainig: unknown field (valid fields: model, dataset"),
        (with_spec(method={"lora": {"rank": 8}}), "spec.method.lora.rank: unknown field"),
        (with_spec(model={}), "spec.model: set exactly one of model.preset or model.path"),
        (
            with_spec(model={"preset": "smollm2-135m-instruct", "path": "/m"}),
            "set exactly one of model.preset or model.path",
        ),
        (with_spec(model={"preset": "gpt-9"}), "spec.model.preset: Input should be 'all-minilm"),
        (with_spec(model={"preset": "gpt-9"}), "(got 'gpt-9')"),
        (with_spec(training={"learningRate": -1}), "spec.training.learningRate:"),
        (with_spec(dataset={"path": "d.jsonl", "evalFraction": 0.9}), "spec.dataset.evalFraction"),
        (with_spec(serving={"port": 70000}), "spec.serving.port: Input should be less than"),
        ({**MINIMAL, "metadata": {"name": "Bad_Name"}}, "metadata.name: String should match"),
        (
            {**MINIMAL, "spec": {"model": {"preset": "smollm2-135m-instruct"}}},
            "spec.dataset: required field is missing",
        ),
        ({**MINIMAL, "kind": "Job"}, "kind: Input should be 'FineTuneJob'"),
    ],
)
def test_invalid_manifests_name_the_field(doc: dict[str, Any], expected: str) -> None:
    with pytest.raises(ManifestError) as err:
        parse_manifest(doc)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_load_manifest_reports_yaml_errors_with_line(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("apiVersion: maap.dev/v1alpha1\nkind: FineTuneJob\nspec: [unclosed\n")
    with pytest.raises(ManifestError, match=r"bad.yaml: line \d+: invalid YAML"):
        load_manifest(path)


def test_load_manifest_needs_one_finetunejob(tmp_path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump_all([MINIMAL, MINIMAL]))
    with pytest.raises(ManifestError, match="expected exactly one FineTuneJob document, found 2"):
        load_manifest(path)
    with pytest.raises(ManifestError, match="no such file"):
        load_manifest(tmp_path / "missing.yaml")


def test_trainer_config_is_the_data_plane_view() -> None:
    job = parse_manifest(with_spec(serving={"replicas": 3, "port": 9000, "maxQueue": 5}))
    cfg = job.spec.trainer_config("demo", "/out")
    assert cfg.serving.port == 9000 and cfg.serving.max_queue == 5
    assert "replicas" not in cfg.serving.to_json_dict()
    assert cfg.serving.auth_token_env is None and cfg.serving.auth_token_file is None
    assert cfg.output_dir == "/out" and cfg.job_name == "demo"


def test_serving_auth_becomes_the_servers_token_variable() -> None:
    # The cluster API says whether clients need a token; the server's config says where the
    # token is: the variable the serving Deployment fills from the Secret.
    job = parse_manifest(with_spec(serving={"auth": {"enabled": True, "secretName": "mine"}}))
    serving = job.spec.trainer_config("demo", "/out").serving
    assert serving.auth_token_env == SERVING_TOKEN_ENV and serving.auth_token_file is None
    container = build_serving_deployment(job, "uid", OperatorSettings())["spec"]["template"][
        "spec"
    ]["containers"][0]
    injected = {e["name"]: e.get("valueFrom") for e in container["env"]}
    assert injected[SERVING_TOKEN_ENV] == {"secretKeyRef": {"name": "mine", "key": "token"}}


@pytest.mark.parametrize("field", ["authTokenEnv", "authTokenFile"])
def test_the_cluster_api_has_no_token_source(field: str) -> None:
    # Only serving.auth: a token source beside it could contradict it.
    with pytest.raises(ManifestError, match=f"spec.serving.{field}: unknown field"):
        parse_manifest(with_spec(serving={field: "X"}))
