"""The gateway's pure parts: the FineTuneJob <-> OpenAI job mapping, events and pages,
webhook signatures (checked by the openai client's own verifier), API-key files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import openai
import pytest
from maap.gateway import jobs
from maap.gateway.backend import JobEvent
from maap.gateway.errors import APIError
from maap.gateway.job_events import job_checkpoints, job_events, page
from maap.gateway.requests import CreateFineTuningJob
from maap.gateway.tenancy import OpenAccess, StaticKeys, tenant_of
from maap.gateway.webhooks import decode_secret, signed_headers
from maap_api.errors import ConfigError
from maap_api.history import CheckpointPoint, JobHistory, LogPoint


def manifest(**request: object) -> dict:
    body = CreateFineTuningJob(model="smollm2-135m-instruct", training_file="file-1", **request)
    return jobs.build_finetunejob(
        body, "ftjob-0123456789ab", "team-a", jobs.DataLocation("/data/f.jsonl", "ab" * 32), None
    )


def with_status(obj: dict, **status: object) -> dict:
    return {**obj, "status": status}


@pytest.mark.parametrize(
    ("status", "suspend", "cancelled", "expected"),
    [
        ({}, False, False, "queued"),
        ({"phase": "Pending"}, False, False, "queued"),
        ({"phase": "Fetching"}, False, False, "validating_files"),
        ({"phase": "Training"}, False, False, "running"),
        ({"phase": "Exporting"}, False, False, "running"),
        ({"phase": "Serving"}, False, False, "running"),  # its server is not ready yet
        (
            {"phase": "Serving", "conditions": [{"type": "ServingReady", "status": "True"}]},
            False,
            False,
            "succeeded",
        ),
        ({"phase": "Succeeded"}, False, False, "succeeded"),
        ({"phase": "Failed"}, False, False, "failed"),
        ({"phase": "Training"}, True, False, "paused"),
        ({"phase": "Suspended"}, True, False, "paused"),
        ({"phase": "Training"}, True, True, "cancelled"),
        ({"phase": "Failed"}, True, True, "failed"),  # it failed before the cancel
    ],
)
def test_status_of_each_phase(status: dict, suspend: bool, cancelled: bool, expected: str) -> None:
    obj = manifest()
    obj["spec"]["suspend"] = suspend
    if cancelled:
        obj["metadata"]["annotations"][jobs.CANCELLED] = "2026-12-01T00:00:00Z"
    assert jobs.openai_status(with_status(obj, **status)) == expected


def test_the_job_object_of_a_failed_fetch_names_the_file() -> None:
    obj = with_status(manifest(), phase="Failed", conditions=[{
        "type": "Failed", "status": "True", "reason": "FetchFailed",
        "message": "dataset.sha256: checksum mismatch", "lastTransitionTime": "x"}],
        completionTime="2026-12-01T10:00:00Z")  # fmt: skip
    job = jobs.openai_job(obj)
    assert job["status"] == "failed" and job["fine_tuned_model"] is None
    assert job["error"] == {"code": "fetch_failed", "message": "dataset.sha256: checksum mismatch",
                            "param": "training_file"}  # fmt: skip
    assert job["finished_at"] == 1796119200


def test_fine_tuned_model_names_round_trip() -> None:
    obj = with_status(manifest(suffix="pirate"), phase="Succeeded")
    name = jobs.openai_job(obj)["fine_tuned_model"]
    assert name == "ft:smollm2-135m-instruct:team-a:pirate:0123456789ab"
    assert jobs.parse_fine_tuned_model(name) == ("team-a", "ftjob-0123456789ab")
    assert jobs.parse_fine_tuned_model("smollm2-135m-instruct") is None
    assert jobs.parse_fine_tuned_model("ft:a:b") is None


def test_hyperparameters_map_onto_the_spec() -> None:
    spec = manifest(hyperparameters={"n_epochs": 2, "learning_rate_multiplier": 2})["spec"]
    assert spec["training"] == {"epochs": 2, "learningRate": 4e-4}
    with pytest.raises(APIError) as exc:
        manifest(hyperparameters={"n_epochs": 1},
                 method={"type": "supervised", "supervised": {}})  # fmt: skip
    assert exc.value.param == "hyperparameters"
    full = manifest(maap={"method": {"type": "full"}})["spec"]
    assert full["method"] == {"type": "full"} and full["export"]["adapter"] is False


def test_events_newest_first_with_one_metrics_event_per_step() -> None:
    history = JobHistory().merged(
        [LogPoint(step=0, time=100, valid_loss=3.5),
         LogPoint(step=1, time=110, train_loss=3.0),
         LogPoint(step=2, time=120, train_loss=2.5, valid_loss=2.9)],
        [CheckpointPoint(step=2, time=121, path="checkpoints/checkpoint-2", train_loss=2.5)],
    )  # fmt: skip
    happened = [JobEvent(99, "info", "Created fine-tuning job"),
                JobEvent(130, "info", "The job has successfully completed")]  # fmt: skip
    events = job_events("ftjob-0123456789ab", happened, history)
    assert [e["created_at"] for e in events] == [130, 120, 110, 100, 99]
    assert events[1]["message"] == "Step 2: training loss=2.5000, validation loss=2.9000"
    assert events[1]["data"] == {"step": 2, "train_loss": 2.5, "valid_loss": 2.9}
    assert len({e["id"] for e in events}) == 5
    assert job_events("ftjob-0123456789ab", happened, history)[2]["id"] == events[2]["id"]
    first = page(events, None, 2)
    assert first["has_more"] and [e["id"] for e in first["data"]] == [e["id"] for e in events[:2]]
    rest = page(events, first["last_id"], 10)
    assert not rest["has_more"] and len(rest["data"]) == 3
    with pytest.raises(APIError) as exc:
        page(events, "ftevent-nope", 10)
    assert exc.value.param == "after"
    checkpoints = job_checkpoints(manifest(), "ft:x:team-a::0123456789ab", history)
    assert checkpoints[0]["step_number"] == 2
    assert checkpoints[0]["fine_tuned_model_checkpoint"] == "ft:x:team-a::0123456789ab:ckpt-step-2"


def test_webhook_signatures_verify_with_the_openai_client() -> None:
    secret = "whsec_" + "bWFhcC10ZXN0LXdlYmhvb2stc2VjcmV0LTMyYnl0ZXM="
    body = json.dumps({"object": "event", "id": "wh_1", "type": "fine_tuning.job.succeeded",
                       "created_at": 1, "data": {"id": "ftjob-0123456789ab"}})  # fmt: skip
    import time

    headers = signed_headers(decode_secret(secret), body, "wh_1", int(time.time()))
    client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9")
    event = client.webhooks.unwrap(body, headers, secret=secret)
    assert event.type == "fine_tuning.job.succeeded" and event.data.id == "ftjob-0123456789ab"
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body.replace("succeeded", "failed"), headers, secret=secret)
    with pytest.raises(ConfigError):
        decode_secret("short")


def test_keys_file(tmp_path: Path) -> None:
    good = tmp_path / "keys.yaml"
    good.write_text("keys:\n- {key: sk-aaaaaaaaaaaaaaaa, namespace: team-a}\n")
    keys = StaticKeys.from_file(good)
    assert tenant_of("Bearer sk-aaaaaaaaaaaaaaaa", keys) == "team-a"
    for header in (None, "Bearer sk-bbbbbbbbbbbbbbbb", "Basic abc"):
        with pytest.raises(APIError) as exc:
            tenant_of(header, keys)
        assert exc.value.status == 401
    assert tenant_of(None, OpenAccess()) == "default"
    for text, problem in (
        ("keys: []\n", "expected `keys:`"),
        ("keys:\n- {key: short, namespace: a}\n", "keys[0].key: at least 16"),
        ("keys:\n- {key: sk-aaaaaaaaaaaaaaaa, namespace: Team_A}\n", "not a namespace name"),
        ("keys:\n- {key: sk-aaaaaaaaaaaaaaaa}\n", "expected `key` and `namespace`"),
    ):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError) as exc:
            StaticKeys.from_file(bad)
        assert problem in str(exc.value), exc.value


def test_the_access_log_hides_a_signed_links_signature_and_keeps_other_queries() -> None:
    from maap.gateway.serve import hide_signed_link_queries
    from uvicorn.logging import AccessFormatter

    formatter = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s')

    def line(path: str) -> str:
        record = logging.LogRecord(
            "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
            ("10.0.0.7:4242", "GET", path, "1.1", 200), None,
        )  # fmt: skip
        assert hide_signed_link_queries(record) is True
        return formatter.format(record)

    signed = line("/internal/files/team-a/file-0a1b?expires=1796767018&sig=4894cb1e")
    assert "sig=" not in signed and "expires=" not in signed, signed
    assert "GET /internal/files/team-a/file-0a1b?<query hidden> HTTP/1.1" in signed, signed
    listing = line("/v1/fine_tuning/jobs?limit=2&after=ftjob-1")
    assert "GET /v1/fine_tuning/jobs?limit=2&after=ftjob-1 HTTP/1.1" in listing, listing
