"""The gateway's OpenAI API with the real `openai` client, no training: files, job creation,
listing, cancel, tenancy and every bad input's error body.

The backend is the real local one with its worker not started, so jobs stay queued: what
runs them is tests/test_gateway_local.py (slow).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from maap.gateway.app import GatewaySettings, create_app
from maap.gateway.files import FileStore
from maap.gateway.local_backend import LocalBackend
from maap.gateway.tenancy import StaticKeys

from tests.gateway_helpers import KEY_A, KEY_B, KEYS, serving_app

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "pirate-chat" / "train.jsonl"
HELDOUT = ROOT / "examples" / "pirate-chat" / "heldout.jsonl"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, LocalBackend]]:
    state = tmp_path_factory.mktemp("gateway")
    files = FileStore(state / "files")
    backend = LocalBackend(state, files, serve=False)  # worker not started: jobs stay queued
    settings = GatewaySettings(b"k" * 32, run_backend=False)
    app = create_app(backend, StaticKeys(KEYS), files, settings)
    with serving_app(app) as base:
        yield base, backend


@pytest.fixture(scope="module")
def team_a(gateway: tuple[str, LocalBackend]) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway[0], api_key=KEY_A, max_retries=0)


@pytest.fixture(scope="module")
def team_b(gateway: tuple[str, LocalBackend]) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway[0], api_key=KEY_B, max_retries=0)


def error_of(exc: pytest.ExceptionInfo[openai.APIStatusError]) -> dict:
    body = exc.value.body
    assert isinstance(body, dict), body
    # The SDK hands over the `error` object itself.
    return body.get("error", body)


def test_files_round_trip(team_a: openai.OpenAI) -> None:
    created = team_a.files.create(file=TRAIN.open("rb"), purpose="fine-tune")
    assert created.id.startswith("file-") and created.bytes == TRAIN.stat().st_size
    assert created.status == "processed" and created.filename == "train.jsonl"
    assert team_a.files.retrieve(created.id).id == created.id
    assert created.id in [f.id for f in team_a.files.list()]
    assert team_a.files.content(created.id).read() == TRAIN.read_bytes()
    deleted = team_a.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        team_a.files.retrieve(created.id)


def test_a_malformed_row_is_refused_with_its_line(team_a: openai.OpenAI) -> None:
    good = TRAIN.read_text().splitlines()[0]
    text = f'{good}\n{good}\n{{"messages": [{{"role": "user"}}]}}\n'
    with pytest.raises(openai.BadRequestError) as exc:
        team_a.files.create(file=("rows.jsonl", io.BytesIO(text.encode())), purpose="fine-tune")
    error = error_of(exc)
    assert error["param"] == "file" and error["code"] == "invalid_file"
    assert "rows.jsonl" in error["message"] and "line 3" in error["message"], error
    with pytest.raises(openai.BadRequestError) as exc:
        team_a.files.create(file=("x.jsonl", io.BytesIO(b"{not json\n")), purpose="fine-tune")
    assert "line 1" in error_of(exc)["message"]


def test_wrong_purpose_and_format(team_a: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        team_a.files.create(file=TRAIN.open("rb"), purpose="assistants")
    assert error_of(exc)["param"] == "purpose"
    with pytest.raises(openai.BadRequestError) as exc:
        team_a.files.create(file=("rows.csv", io.BytesIO(b"a,b\n")), purpose="fine-tune")
    assert error_of(exc)["code"] == "invalid_file_format"


def test_create_list_and_cancel_jobs(team_a: openai.OpenAI, gateway) -> None:
    training = team_a.files.create(file=TRAIN.open("rb"), purpose="fine-tune")
    validation = team_a.files.create(file=HELDOUT.open("rb"), purpose="fine-tune")
    job = team_a.fine_tuning.jobs.create(
        model="SmolLM2-135M-Instruct",
        training_file=training.id,
        validation_file=validation.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 0.5}}},
        suffix="pirate",
        seed=7,
        metadata={"team": "a", "run": "1"},
    )  # fmt: skip
    assert job.id.startswith("ftjob-") and job.status == "queued"
    assert job.model == "smollm2-135m-instruct" and job.organization_id == "team-a"
    assert (job.training_file, job.validation_file) == (training.id, validation.id)
    assert job.hyperparameters.n_epochs == 3 and job.hyperparameters.batch_size == 4
    assert job.hyperparameters.learning_rate_multiplier == 0.5 and job.seed == 7
    assert job.fine_tuned_model is None and job.metadata == {"team": "a", "run": "1"}

    # The FineTuneJob it made: the same spec a user would apply.
    _, backend = gateway
    obj = backend.get("team-a", job.id)
    spec = obj["spec"]
    assert spec["model"] == {"preset": "smollm2-135m-instruct"}
    assert spec["training"] == {"epochs": 3, "batchSize": 4, "learningRate": 1e-4, "seed": 7}
    assert spec["dataset"]["sha256"] and Path(spec["dataset"]["path"]).is_file()
    assert spec["export"] == {"adapter": True}

    other = team_a.fine_tuning.jobs.create(
        model="smollm2-135m-instruct", training_file=training.id,
        hyperparameters={"n_epochs": 1}, metadata={"team": "a", "run": "2"},
    )  # fmt: skip
    listed = team_a.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in listed.data] == [other.id] and listed.has_more
    after = team_a.fine_tuning.jobs.list(after=other.id, limit=10)
    assert job.id in [j.id for j in after.data]
    filtered = team_a.fine_tuning.jobs.list(extra_query={"metadata[run]": "1"})
    assert [j.id for j in filtered.data] == [job.id]

    # A file a live job uses cannot be deleted; cancelling frees it.
    with pytest.raises(openai.ConflictError):
        team_a.files.delete(validation.id)
    cancelled = team_a.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at
    assert team_a.files.delete(validation.id).deleted
    with pytest.raises(openai.BadRequestError) as exc:
        team_a.fine_tuning.jobs.cancel(job.id)
    assert error_of(exc)["code"] == "invalid_job_state"
    with pytest.raises(openai.BadRequestError):
        team_a.fine_tuning.jobs.resume(job.id)

    paused = team_a.fine_tuning.jobs.pause(other.id)
    assert paused.status == "paused"
    assert team_a.fine_tuning.jobs.resume(other.id).status == "queued"
    events = team_a.fine_tuning.jobs.list_events(other.id)
    messages = [e.message for e in events.data]
    assert "Fine-tuning job resumed" in messages and "Fine-tuning job paused" in messages
    assert messages.index("Fine-tuning job resumed") < messages.index("Fine-tuning job paused")


def test_bad_job_requests(team_a: openai.OpenAI) -> None:
    training = team_a.files.create(file=TRAIN.open("rb"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as exc:
        team_a.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training.id)
    error = error_of(exc)
    assert error["param"] == "model" and "smollm2-135m-instruct" in error["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        team_a.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file="file-nope")
    assert error_of(exc)["param"] == "training_file"
    with pytest.raises(openai.BadRequestError) as exc:
        team_a.fine_tuning.jobs.create(
            model="smollm2-135m-instruct", training_file=training.id,
            method={"type": "dpo", "dpo": {}},
        )  # fmt: skip
    assert error_of(exc)["param"] == "method.type"
    with pytest.raises(openai.BadRequestError) as exc:
        team_a.fine_tuning.jobs.create(
            model="smollm2-135m-instruct", training_file=training.id,
            hyperparameters={"n_epochs": 0},
        )  # fmt: skip
    assert error_of(exc)["param"] == "hyperparameters.n_epochs"
    with pytest.raises(openai.BadRequestError) as exc:
        team_a.fine_tuning.jobs.create(
            model="smollm2-135m-instruct", training_file=training.id,
            extra_body={"maap": {"method": {"type": "sorcery"}}},
        )  # fmt: skip
    error = error_of(exc)
    assert error["param"] == "maap" and "spec.method.type" in error["message"]
    with pytest.raises(openai.NotFoundError) as exc:
        team_a.fine_tuning.jobs.retrieve("ftjob-000000000000")
    assert error_of(exc)["code"] == "fine_tuning_job_not_found"


def test_another_tenant_sees_nothing(team_a: openai.OpenAI, team_b: openai.OpenAI) -> None:
    training = team_a.files.create(file=TRAIN.open("rb"), purpose="fine-tune")
    job = team_a.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file=training.id)
    for call in (
        lambda: team_b.fine_tuning.jobs.retrieve(job.id),
        lambda: team_b.fine_tuning.jobs.cancel(job.id),
        lambda: team_b.fine_tuning.jobs.list_events(job.id),
        lambda: team_b.fine_tuning.jobs.checkpoints.list(job.id),
        lambda: team_b.files.retrieve(training.id),
        lambda: team_b.files.content(training.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert job.id not in [j.id for j in team_b.fine_tuning.jobs.list().data]
    assert training.id not in [f.id for f in team_b.files.list()]
    with pytest.raises(openai.BadRequestError) as exc:  # A's file is no file for B
        team_b.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file=training.id)
    assert error_of(exc)["param"] == "training_file"
    model = f"ft:smollm2-135m-instruct:team-a::{job.id.removeprefix('ftjob-')}"
    with pytest.raises(openai.NotFoundError) as exc:
        team_b.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert "does not exist or you do not have access" in error_of(exc)["message"]


def test_keys(gateway) -> None:
    base, _ = gateway
    with pytest.raises(openai.AuthenticationError) as exc:
        openai.OpenAI(base_url=base, api_key="sk-wrong", max_retries=0).files.list()
    assert error_of(exc)["code"] == "invalid_api_key"


def test_models_lists_the_base_models(team_a: openai.OpenAI) -> None:
    ids = [m.id for m in team_a.models.list()]
    assert "smollm2-135m-instruct" in ids and "all-minilm-l6-v2" not in ids
    with pytest.raises(openai.NotFoundError) as exc:
        team_a.chat.completions.create(
            model="smollm2-135m-instruct", messages=[{"role": "user", "content": "hi"}]
        )
    assert "not being served" in error_of(exc)["message"]


def test_signed_file_links(gateway, team_a: openai.OpenAI) -> None:
    import httpx
    from maap.gateway.file_urls import signed_file_url

    base, _ = gateway
    root = base.removesuffix("/v1")
    stored = team_a.files.create(file=TRAIN.open("rb"), purpose="fine-tune")
    url = signed_file_url(root, b"k" * 32, "team-a", stored.id)
    assert httpx.get(url).content == TRAIN.read_bytes()
    forged = url.replace("team-a", "team-b")
    answer = httpx.get(forged)
    assert answer.status_code == 403 and "signature" in json.dumps(answer.json())
    stale = signed_file_url(root, b"k" * 32, "team-a", stored.id, ttl_seconds=-10)
    assert "expired" in httpx.get(stale).json()["error"]["message"]
