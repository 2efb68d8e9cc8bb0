"""The gateway's cluster backend and API-key Secrets, the parts that need no cluster: how a
FineTuneJob reads as a served model, how Events read as job events, how API failures read
as OpenAI errors, how a Secret reads as a key. The calls themselves run against the real
API server in tests/controlplane/test_gateway_kube.py.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException
from maap.gateway import jobs
from maap.gateway.errors import APIError
from maap.gateway.file_urls import INTERNAL_PREFIX, check_signature
from maap.gateway.kube_backend import (
    KubeBackend,
    api_error,
    decode_secret_value,
    is_gateway_job,
    is_served,
    job_event,
    kube_errors,
    refuse_if_finished,
    rfc3339,
    served_model,
    upstream_of,
)
from maap.gateway.kube_keys import key_map, read_key_secret
from maap.gateway.requests import CreateFineTuningJob
from maap_api.sources import fetched_dataset_path


def job(name: str = "ftjob-0123456789ab", namespace: str = "team-a", **status: Any) -> dict:
    return {
        "apiVersion": "maap.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {jobs.GATEWAY_LABEL: "true"},
            "annotations": {jobs.SUFFIX: "support"},
            "creationTimestamp": "2026-12-01T10:00:00Z",
        },
        "spec": {"model": {"preset": "smollm2-135m-instruct"}, "dataset": {"path": "x.jsonl"}},
        "status": status,
    }


READY = {"type": "ServingReady", "status": "True", "reason": "Ready"}
ENDPOINT = "http://ftjob-0123456789ab-server.team-a.svc:8000/v1"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def api_exception(status: int, body: dict[str, Any] | None, reason: str = "") -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.body = json.dumps(body) if body is not None else None
    return exc


# --- served models -------------------------------------------------------------------------


def test_a_serving_ready_job_is_a_model_routed_to_its_service_under_the_job_name() -> None:
    obj = job(phase="Serving", conditions=[READY], endpoint=ENDPOINT)
    assert is_served(obj)
    model = served_model(obj, "tok")
    assert model.name == "ft:smollm2-135m-instruct:team-a:support:0123456789ab"
    assert model.name == jobs.fine_tuned_model_name(obj)
    # The router appends /v1/chat/completions to the upstream.
    assert model.upstream == "http://ftjob-0123456789ab-server.team-a.svc:8000"
    assert model.upstream_model == "ftjob-0123456789ab"
    assert model.token == "tok" and model.parent == "smollm2-135m-instruct"
    assert model.created == int(datetime(2026, 12, 1, 10, tzinfo=UTC).timestamp())


@pytest.mark.parametrize(
    "status",
    [
        {"phase": "Serving", "conditions": [READY]},  # no endpoint yet
        {"phase": "Serving", "endpoint": ENDPOINT, "conditions": [{**READY, "status": "False"}]},
        {"phase": "Serving", "endpoint": ENDPOINT, "conditions": []},
        {"phase": "Exporting", "endpoint": ENDPOINT, "conditions": [READY]},
        {},
    ],
)
def test_a_job_not_ready_to_answer_is_not_served(status: dict[str, Any]) -> None:
    assert not is_served(job(**status))


def test_upstream_of_endpoint_forms() -> None:
    assert upstream_of("http://s.ns.svc:8000/v1") == "http://s.ns.svc:8000"
    assert upstream_of("http://s.ns.svc:8000/v1/") == "http://s.ns.svc:8000"
    assert upstream_of("http://s.ns.svc:8000") == "http://s.ns.svc:8000"


def test_only_labelled_jobs_are_the_gateways() -> None:
    assert is_gateway_job(job())
    unlabelled = job()
    unlabelled["metadata"]["labels"] = {}
    assert not is_gateway_job(unlabelled)
    unlabelled["metadata"]["labels"] = {jobs.GATEWAY_LABEL: "yes"}
    assert not is_gateway_job(unlabelled)


# --- pause, resume, cancel -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "state"),
    [
        (job(phase="Failed"), "failed"),
        (job(phase="Succeeded"), "succeeded"),
        (job(phase="Serving", conditions=[READY], endpoint=ENDPOINT), "succeeded"),
    ],
)
def test_a_finished_job_cannot_be_paused_resumed_or_cancelled(obj: dict, state: str) -> None:
    for action in ("pause", "resume", "cancel"):
        with pytest.raises(APIError) as caught:
            refuse_if_finished(obj, action)
        assert caught.value.status == 400 and caught.value.code == "invalid_job_state"
        assert f"is {state}" in caught.value.message and action in caught.value.message
        assert caught.value.param == "fine_tuning_job_id"


def test_a_cancelled_job_is_finished_and_a_running_or_paused_one_is_not() -> None:
    cancelled = job(phase="Training")
    cancelled["metadata"]["annotations"][jobs.CANCELLED] = rfc3339(0)
    with pytest.raises(APIError, match="is cancelled"):
        refuse_if_finished(cancelled, "resume")
    paused = job(phase="Training")
    paused["spec"]["suspend"] = True
    refuse_if_finished(paused, "resume")
    refuse_if_finished(job(phase="Training"), "pause")
    refuse_if_finished(job(), "cancel")


def test_cancel_time_is_rfc3339() -> None:
    assert rfc3339(1_790_000_000.7) == "2026-09-21T14:13:20Z"


# --- events --------------------------------------------------------------------------------


def test_events_read_as_job_events_with_warnings_as_warn() -> None:
    first = datetime(2026, 12, 1, 10, 0, 5, tzinfo=UTC)
    warning = client.CoreV1Event(
        metadata=client.V1ObjectMeta(name="e1"),
        involved_object=client.V1ObjectReference(kind="FineTuneJob", name="j"),
        type="Warning", reason="BackOff", message="training pod failed: OOMKilled",
        first_timestamp=first, last_timestamp=datetime(2026, 12, 1, 11, tzinfo=UTC),
    )  # fmt: skip
    event = job_event(warning)
    assert (event.level, event.message, event.time) == (
        "warn", "training pod failed: OOMKilled", first.timestamp(),
    )  # fmt: skip
    # A new-style Event has only eventTime; one with no message says its reason.
    micro = client.CoreV1Event(
        metadata=client.V1ObjectMeta(name="e2"),
        involved_object=client.V1ObjectReference(kind="FineTuneJob", name="j"),
        type="Normal", reason="Training", event_time=first,
    )  # fmt: skip
    assert job_event(micro) == type(event)(time=first.timestamp(), level="info", message="Training")


# --- errors --------------------------------------------------------------------------------


def test_a_cel_refusal_is_a_400_with_the_api_servers_message() -> None:
    message = (
        'FineTuneJob.maap.dev "ftjob-1" is invalid: spec.training: Invalid value: "object": '
        "training.deepspeed.stage 3 needs method.type full or lora"
    )
    exc = api_exception(422, {"kind": "Status", "message": message, "reason": "Invalid"})
    error = api_error(exc, "create FineTuneJob")
    assert (error.status, error.message, error.param) == (400, message, "maap")
    assert error.kind == "invalid_request_error"


def test_a_missing_namespace_is_a_400_that_names_it() -> None:
    body = {"message": 'namespaces "team-x" not found', "reason": "NotFound",
            "details": {"name": "team-x", "kind": "namespaces"}, "code": 404}  # fmt: skip
    error = api_error(api_exception(404, body), "create FineTuneJob in namespace team-x")
    assert error.status == 400 and error.code == "namespace_not_found"
    assert "'team-x'" in error.message and "does not exist" in error.message


@pytest.mark.parametrize(
    ("status", "body", "expected", "words"),
    [
        (404, {"message": "the server could not find the requested resource"}, 503,
         "CRD is not installed"),
        (403, {"message": 'User "system:serviceaccount:x:y" cannot create resource'}, 500,
         "RBAC"),
        (403, {"message": "unable to create new content in namespace t because it is being "
                          "terminated"}, 400, "being terminated"),
        (500, {"message": "etcdserver: request timed out"}, 502, "etcdserver: request timed out"),
        (503, None, 502, "Service Unavailable"),
        (409, {"message": "the object has been modified"}, 409, "has been modified"),
    ],
)  # fmt: skip
def test_other_api_failures_say_what_the_api_server_said(
    status: int, body: dict | None, expected: int, words: str
) -> None:
    error = api_error(api_exception(status, body, reason="Service Unavailable"), "do it")
    assert error.status == expected and words in error.message


def test_an_unreachable_api_server_is_a_503() -> None:
    with pytest.raises(APIError) as caught, kube_errors("list FineTuneJobs"):
        raise urllib3.exceptions.MaxRetryError(None, "/apis", "connection refused")  # type: ignore[arg-type]
    assert caught.value.status == 503 and "not reachable" in caught.value.message


def test_secret_values_decode_or_read_as_missing() -> None:
    assert decode_secret_value(b64("tok\n")) == "tok"
    assert decode_secret_value(None) is None and decode_secret_value("") is None
    assert decode_secret_value("not base64!") is None
    assert decode_secret_value(base64.b64encode(b"\xff\xfe").decode()) is None


# --- data locations ------------------------------------------------------------------------


def test_a_stored_file_is_a_signed_url_the_fetch_stage_accepts() -> None:
    secret = b"s" * 32
    backend = KubeBackend(client.ApiClient(), "maap-system", "http://gw.maap-system.svc:8080/",
                          secret)  # fmt: skip
    file_id = "file-" + "a" * 24
    location = backend.data_location("team-a", file_id, "f" * 64)
    assert location.sha256 == "f" * 64
    url = urlsplit(location.path)
    assert f"{url.scheme}://{url.netloc}" == "http://gw.maap-system.svc:8080"
    assert url.path == f"{INTERNAL_PREFIX}/team-a/{file_id}"
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert check_signature(secret, "team-a", file_id, query["expires"], query["sig"]) is None
    assert check_signature(secret, "team-b", file_id, query["expires"], query["sig"])
    # The FineTuneJob API takes the URL, query string and all, as dataset.path; the fetch
    # stage names its copy after the file id, which (no suffix) training reads as JSONL.
    request = CreateFineTuningJob(model="smollm2-135m-instruct", training_file=file_id)
    manifest = jobs.build_finetunejob(request, "ftjob-0123456789ab", "team-a", location, None)
    assert manifest["spec"]["dataset"] == {"path": location.path, "sha256": "f" * 64}
    assert fetched_dataset_path(location.path, "/in").name == file_id


# --- API-key Secrets -----------------------------------------------------------------------


def key_secret(name: str, data: dict[str, str] | None, rv: str = "1") -> client.V1Secret:
    return client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, resource_version=rv),
        data={k: b64(v) for k, v in data.items()} if data is not None else None,
    )


def test_a_key_secret_reads_as_key_and_namespace() -> None:
    found = read_key_secret(key_secret("a", {"apiKey": "sk-" + "a" * 20, "namespace": "team-a"}))
    assert (found.key, found.namespace, found.problem) == ("sk-" + "a" * 20, "team-a", None)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (None, "no data key apiKey or namespace"),
        ({"apiKey": "sk-" + "a" * 20}, "no data key namespace"),
        ({"apiKey": "short", "namespace": "team-a"}, "at least 16 characters"),
        ({"apiKey": "sk-" + "a" * 20, "namespace": "Team_A"}, "not a namespace name"),
    ],
)
def test_a_malformed_key_secret_says_why(data: dict[str, str] | None, problem: str) -> None:
    found = read_key_secret(key_secret("bad", data))
    assert found.key is None and problem in (found.problem or "")


def test_a_non_text_key_is_malformed() -> None:
    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(name="bin"),
        data={"apiKey": base64.b64encode(b"\xff" * 20).decode(), "namespace": b64("team-a")},
    )
    assert "UTF-8" in (read_key_secret(secret).problem or "")


def test_one_key_in_two_secrets_opens_neither() -> None:
    same = {"apiKey": "sk-" + "d" * 20}
    found = [
        read_key_secret(key_secret("one", {**same, "namespace": "team-a"})),
        read_key_secret(key_secret("two", {**same, "namespace": "team-b"})),
        read_key_secret(key_secret("ok", {"apiKey": "sk-" + "e" * 20, "namespace": "team-c"})),
        read_key_secret(key_secret("bad", {"apiKey": "x"})),
    ]
    keys, skipped = key_map(found)
    assert keys == {"sk-" + "e" * 20: "team-c"}
    assert sorted(s.name for s in skipped) == ["bad", "one", "two"]
    assert "the same apiKey as two" in next(s.problem for s in skipped if s.name == "one")


def test_gateway_rbac_document_holds_exactly_the_gateway_rules() -> None:
    from maap.rbac import GATEWAY_OWN_NAMESPACE_RULES, GATEWAY_RULES, render_gateway_rbac

    docs = {d["kind"]: d for d in render_gateway_rbac("maap-system", "gw")}
    as_tuples = {
        (tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"]))
        for r in docs["ClusterRole"]["rules"]
    }
    assert as_tuples == {(tuple(g), tuple(r), tuple(v)) for g, r, v in GATEWAY_RULES}
    assert len(docs["Role"]["rules"]) == len(GATEWAY_OWN_NAMESPACE_RULES)
    assert docs["Role"]["metadata"]["namespace"] == "maap-system"
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        assert docs[kind]["subjects"] == [
            {"kind": "ServiceAccount", "name": "gw", "namespace": "maap-system"}
        ]
