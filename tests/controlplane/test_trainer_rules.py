"""Every rule of the table (maap_api.rules), enforced by `maap validate` and by a real
API server with the committed CRD, with the same field and the same message.

For each rule, its example (a minimal valid FineTuneJob plus the change that breaks the
rule) goes through both; a rule that the CRD lacks, or that pydantic checks differently,
fails here. The valid base spec, and sensible specs with every default filled in by the
server, are admitted by both."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import REPO_ROOT
from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.rest import ApiException
from maap.cli import app
from maap.crd import render_crd
from typer.testing import CliRunner

from tests.test_api import MINIMAL
from tests.test_rules import API_RULES, merged, message_pattern

pytestmark = pytest.mark.controlplane

CRD_FILE = REPO_ROOT / "crds" / "finetunejobs.maap.dev.yaml"
# How the API server words a cause's message around the rule's own message.
_CAUSE_PREFIX = re.compile(r'^(Forbidden|Required value|Invalid value(: "[^"]*")?): ')
CHAT_ROWS = [
    {"messages": [{"role": "user", "content": f"Question {i}?"},
                  {"role": "assistant", "content": f"Answer {i}."}]}
    for i in range(4)
]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def committed_crd_is_current() -> None:
    # The control plane installs crds/ at start: these tests check what it holds.
    assert CRD_FILE.is_file(), f"{CRD_FILE} is missing: run `make generate` and commit it"
    assert CRD_FILE.read_text() == render_crd(), "crds/ drifted: run `make generate`"


def job_spec(changes: dict[str, Any]) -> dict[str, Any]:
    return merged(MINIMAL["spec"], changes)


def create(api_client: ApiClient, namespace: str, spec: dict[str, Any]) -> tuple[int, Any]:
    body = {
        "apiVersion": "maap.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": f"t-{uuid.uuid4().hex[:8]}", "namespace": namespace},
        "spec": spec,
    }
    api = client.CustomObjectsApi(api_client)
    try:
        created = api.create_namespaced_custom_object(
            "maap.dev", "v1alpha1", namespace, "finetunejobs", body
        )
    except ApiException as e:
        return int(e.status), json.loads(e.body)
    return 201, created


def api_errors(api_client: ApiClient, namespace: str, spec: dict[str, Any]) -> dict[str, str]:
    """field -> message of each cause the API server gives for refusing `spec`."""
    code, status = create(api_client, namespace, spec)
    assert code == 422, status
    return {c["field"]: _CAUSE_PREFIX.sub("", c["message"]) for c in status["details"]["causes"]}


def validate_errors(tmp_path: Path, spec: dict[str, Any]) -> tuple[int, dict[str, str]]:
    """`maap validate` of `spec` as a file: its exit code and field -> message per line."""
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CHAT_ROWS))
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump({**MINIMAL, "spec": spec}))
    result = CliRunner().invoke(app, ["validate", str(manifest)])
    found = {}
    for line in result.stderr.splitlines():
        problem = line.removeprefix(f"error: {manifest}: ")
        field, _, message = problem.partition(": ")
        found[field] = message
    return result.exit_code, found


@pytest.mark.parametrize("rule", API_RULES, ids=lambda r: r.name)
def test_each_rule_is_refused_alike_by_the_cli_and_the_api_server(
    api_client: ApiClient, namespace: str, tmp_path: Path, rule: Any
) -> None:
    spec = job_spec(rule.example)
    field = f"spec.{rule.field}"
    code, cli = validate_errors(tmp_path, spec)
    assert code == 2 and list(cli) == [field], cli
    server = api_errors(api_client, namespace, spec)
    assert list(server) == [field], server
    # The same text, which is the table's message (the field first, values filled in).
    cli_message = f"{rule.field}: {cli[field]}"
    assert server[field] == cli_message, (server[field], cli_message)
    assert message_pattern(rule).fullmatch(cli_message), cli_message


def test_the_base_spec_is_admitted_by_both(
    api_client: ApiClient, namespace: str, tmp_path: Path
) -> None:
    spec = job_spec({})
    code, cli = validate_errors(tmp_path, spec)
    assert code == 0 and not cli, cli
    status, created = create(api_client, namespace, spec)
    assert status == 201, created


@pytest.mark.parametrize(
    "changes",
    [
        {"method": {"type": "full"}},
        {"method": {"type": "dora", "lora": {"rslora": True, "init": "pissa"}},
         "deepspeed": {"enabled": True, "zeroStage": 2, "offloadOptimizer": True},
         "training": {"packing": True}},
        {"deepspeed": {"enabled": True, "zeroStage": 3, "offloadParameters": True}},
        {"deepspeed": {"enabled": True, "config": {"zero_optimization": {"stage": 1}}}},
        {"model": {"preset": "all-minilm-l6-v2"}, "training": {"task": "token-classification"},
         "dataset": {"format": "ner"}},
        {"method": {"type": "qlora", "lora": {"init": "gaussian"}}, "export": {"adapter": True}},
        {"export": {"precision": "fp16", "executionProvider": "cuda"}},
        {"export": {"precision": "int8", "quantization": "k_quant"}},
    ],
)  # fmt: skip
def test_sensible_specs_are_admitted_with_defaults(
    api_client: ApiClient, namespace: str, changes: dict[str, Any]
) -> None:
    code, created = create(api_client, namespace, job_spec(changes))
    assert code == 201, created
    stored = created["spec"]
    assert stored["method"]["lora"]["r"] == 16, "the server filled in the defaults"
    assert stored["deepspeed"]["zeroStage"] in (0, 1, 2, 3)
    # What the server stored, defaults included, passes pydantic's rules too.
    from maap.manifest import parse_manifest

    parse_manifest({**MINIMAL, "spec": stored})


def test_the_cluster_api_has_no_token_source(api_client: ApiClient, namespace: str) -> None:
    code, status = create(api_client, namespace, job_spec({"serving": {"authTokenEnv": "X"}}))
    assert code == 422 or "authTokenEnv" not in status["spec"]["serving"], status
