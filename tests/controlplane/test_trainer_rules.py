"""The trainer's CEL rules in the generated CRD, enforced by a real API server: nonsense
method/DeepSpeed/task combinations are refused with the reason; sensible ones, with every
default filled in by the server, are accepted."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from controlplane import REPO_ROOT
from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.controlplane

BASE = {"model": {"preset": "smollm2-135m-instruct"}, "dataset": {"path": "d.jsonl"}}


def create(api_client: ApiClient, namespace: str, **spec: Any) -> tuple[int, dict[str, Any]]:
    if not (REPO_ROOT / "crds" / "finetunejobs.maap.dev.yaml").exists():
        pytest.skip("crds/finetunejobs.maap.dev.yaml not generated")
    body = {
        "apiVersion": "maap.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": f"t-{uuid.uuid4().hex[:8]}", "namespace": namespace},
        "spec": {**BASE, **spec},
    }
    api = client.CustomObjectsApi(api_client)
    try:
        created = api.create_namespaced_custom_object(
            "maap.dev", "v1alpha1", namespace, "finetunejobs", body
        )
    except ApiException as e:
        return int(e.status), json.loads(e.body)
    return 201, created


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"method": {"type": "qlora", "lora": {"init": "pissa"}}}, "spec.method",
         "qlora keeps the base in 4 bits"),
        ({"method": {"type": "lora", "lora": {"init": "loftq", "rslora": True}}},
         "spec.method.lora", "LoftQ initialisation cannot be combined with rslora"),
        ({"deepspeed": {"enabled": True, "zeroStage": 2, "offloadParameters": True}},
         "spec.deepspeed", "offloadParameters needs zeroStage 3"),
        ({"deepspeed": {"enabled": True, "zeroStage": 0, "offloadOptimizer": True}},
         "spec.deepspeed", "offloadOptimizer needs zeroStage 1, 2 or 3"),
        ({"training": {"task": "text-classification", "packing": True}}, "spec.training",
         "it applies to task causal-lm only"),
    ],
)  # fmt: skip
def test_nonsense_is_refused_with_the_reason(
    api_client: ApiClient, namespace: str, spec: dict[str, Any], field: str, message: str
) -> None:
    code, status = create(api_client, namespace, **spec)
    assert code == 422, status
    causes = {c.get("field", ""): c.get("message", "") for c in status["details"]["causes"]}
    assert message in causes.get(field, ""), status["message"]


@pytest.mark.parametrize(
    "spec",
    [
        {"method": {"type": "full"}},
        {"method": {"type": "dora", "lora": {"rslora": True, "init": "pissa"}},
         "deepspeed": {"enabled": True, "zeroStage": 3, "offloadOptimizer": True,
                       "offloadParameters": True},
         "training": {"packing": True}},
        {"deepspeed": {"enabled": True, "config": {"zero_optimization": {"stage": 1}}}},
    ],
)  # fmt: skip
def test_sensible_specs_are_accepted_with_defaults(
    api_client: ApiClient, namespace: str, spec: dict[str, Any]
) -> None:
    code, created = create(api_client, namespace, **spec)
    assert code == 201, created
    stored = created["spec"]
    assert stored["method"]["lora"]["r"] == 16, "the server filled in the defaults"
    assert stored["training"]["task"] == "causal-lm"
