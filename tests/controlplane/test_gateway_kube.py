"""The gateway's cluster side against the real API server: KubeBackend and SecretKeys run
as a ServiceAccount bound to exactly the gateway's rules (maap.rbac.GATEWAY_RULES), so a
verb missing there fails here. Nothing is mocked; kwok runs the pods.

The last test drives the whole HTTP API with the real `openai` client against the gateway
app (in-process, uvicorn on 127.0.0.1) while `maap operator` runs the jobs it creates.
"""

from __future__ import annotations

import base64
import io
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
import yaml
from controlplane import make_volume
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from maap.gateway import jobs
from maap.gateway.app import GatewaySettings, create_app
from maap.gateway.errors import APIError
from maap.gateway.files import FileStore
from maap.gateway.kube_backend import KubeBackend
from maap.gateway.kube_keys import API_KEY_LABEL, SecretKeys
from maap.gateway.requests import CreateFineTuningJob
from maap.rbac import render_gateway_rbac
from maap_api.finetunejob import GROUP, PLURAL, VERSION
from maap_api.history import CheckpointPoint, JobHistory, LogPoint, history_configmap_data
from test_operator import MaapProcess, OperatorProcess, wait_until

from tests.conftest import free_port

PRESET = "smollm2-135m-instruct"
FILE_SECRET = b"controlplane-test-file-secret-0123456789"
ROWS = (
    b'{"messages": [{"role": "user", "content": "hi"}, '
    b'{"role": "assistant", "content": "hello"}]}\n'
)


class Gateway:
    """The gateway's namespace and an API client authenticated as its ServiceAccount."""

    def __init__(self, namespace: str, api: client.ApiClient, admin: client.ApiClient) -> None:
        self.namespace, self.api, self.admin = namespace, api, admin
        self.core = client.CoreV1Api(admin)
        self.custom = client.CustomObjectsApi(admin)

    def backend(self, internal_url: str = "http://gw.example.svc:8080") -> KubeBackend:
        return KubeBackend(self.api, self.namespace, internal_url, FILE_SECRET)

    def add_key(self, name: str, data: dict[str, str]) -> None:
        self.core.create_namespaced_secret(
            self.namespace,
            {"metadata": {"name": name, "labels": {API_KEY_LABEL: "true"}}, "stringData": data},
        )


def _service_account_client(
    control_plane: Any, core: client.CoreV1Api, namespace: str, name: str, tmp: Path
) -> client.ApiClient:
    token = core.create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    admin = yaml.safe_load(Path(control_plane.kubeconfig).read_text())
    cluster = admin["clusters"][0]
    path = tmp / "gateway.kubeconfig"
    context = {"cluster": cluster["name"], "user": "gateway"}
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "gateway", "user": {"token": token}}],
        "contexts": [{"name": "gw", "context": context}],
        "current-context": "gw",
    }
    path.write_text(yaml.safe_dump(kubeconfig))
    return config.new_client_from_config(str(path))


@pytest.fixture(scope="module")
def gateway(control_plane, tmp_path_factory) -> Iterator[Gateway]:
    admin = control_plane.api_client()
    core = client.CoreV1Api(admin)
    rbac = client.RbacAuthorizationV1Api(admin)
    namespace = f"gw-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace, "labels": {"maap.dev/test": "1"}}})
    name = f"maap-gateway-{namespace}"
    docs = render_gateway_rbac(namespace, name)
    create = {
        "ServiceAccount": lambda d: core.create_namespaced_service_account(namespace, d),
        "ClusterRole": rbac.create_cluster_role,
        "ClusterRoleBinding": rbac.create_cluster_role_binding,
        "Role": lambda d: rbac.create_namespaced_role(namespace, d),
        "RoleBinding": lambda d: rbac.create_namespaced_role_binding(namespace, d),
    }
    for doc in docs:
        create[doc["kind"]](doc)
    api = _service_account_client(
        control_plane, core, namespace, name, tmp_path_factory.mktemp("gw")
    )
    try:
        yield Gateway(namespace, api, admin)
    finally:
        api.close()
        rbac.delete_cluster_role_binding(name)
        rbac.delete_cluster_role(name)
        core.delete_namespace(namespace)
        admin.close()


def other_namespace(api_client: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(api_client)
    name = f"other-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"maap.dev/test": "1"}}})
    yield name
    core.delete_namespace(name)


@pytest.fixture
def other(api_client) -> Iterator[str]:
    yield from other_namespace(api_client)


def manifest(backend: KubeBackend, namespace: str, **request: Any) -> dict[str, Any]:
    file_id = "file-" + uuid.uuid4().hex[:24]
    body = CreateFineTuningJob(model=PRESET, training_file=file_id, **request)
    location = backend.data_location(namespace, file_id, "a" * 64)
    return jobs.build_finetunejob(body, jobs.new_job_id(), namespace, location, None)


def admin_get(gateway: Gateway, namespace: str, name: str) -> dict[str, Any]:
    return gateway.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def set_status(gateway: Gateway, namespace: str, name: str, status: dict[str, Any]) -> None:
    gateway.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": status}
    )


def condition(type_: str, status: str = "True", reason: str = "Ready") -> dict[str, str]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": type_, "status": status, "reason": reason, "lastTransitionTime": now}


# --- jobs ----------------------------------------------------------------------------------


def test_create_reads_back_only_in_its_own_namespace(gateway: Gateway, namespace, other) -> None:
    backend = gateway.backend()
    body = manifest(backend, namespace, suffix="support", metadata={"team": "a"})
    created = backend.create(namespace, body)
    job_id = created["metadata"]["name"]
    assert created["metadata"]["creationTimestamp"]
    stored = admin_get(gateway, namespace, job_id)
    assert stored["metadata"]["labels"][jobs.GATEWAY_LABEL] == "true"
    notes = stored["metadata"]["annotations"]
    assert notes[jobs.SUFFIX] == "support" and notes[jobs.METADATA] == '{"team": "a"}'
    assert notes[jobs.TRAINING_FILE] == body["metadata"]["annotations"][jobs.TRAINING_FILE]
    # The API server took the signed URL (query string and all) as the dataset.
    assert stored["spec"]["dataset"]["path"].startswith("http://gw.example.svc:8080/internal/")
    assert stored["spec"]["dataset"]["sha256"] == "a" * 64

    assert backend.get(namespace, job_id)["metadata"]["uid"] == stored["metadata"]["uid"]
    assert [o["metadata"]["name"] for o in backend.list(namespace)] == [job_id]
    assert backend.get(other, job_id) is None  # another tenant's id: as if it did not exist
    assert backend.list(other) == []
    assert backend.get(namespace, "ftjob-000000000000") is None
    assert backend.get(namespace, "../../secrets") is None
    assert namespace in backend.namespaces() and other not in backend.namespaces()

    # A FineTuneJob applied by hand in the same namespace is not the gateway's.
    hand = manifest(backend, namespace)
    hand["metadata"]["labels"] = {}
    gateway.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, hand)
    assert backend.get(namespace, hand["metadata"]["name"]) is None
    assert [o["metadata"]["name"] for o in backend.list(namespace)] == [job_id]


def test_create_in_a_missing_namespace_is_a_400(gateway: Gateway) -> None:
    backend = gateway.backend()
    missing = f"nowhere-{uuid.uuid4().hex[:6]}"
    with pytest.raises(APIError) as caught:
        backend.create(missing, manifest(backend, missing))
    assert caught.value.status == 400 and caught.value.code == "namespace_not_found"
    assert repr(missing) in caught.value.message


def test_a_job_the_crd_refuses_is_a_400_with_the_api_servers_message(
    gateway: Gateway, namespace
) -> None:
    backend = gateway.backend()
    body = manifest(backend, namespace)
    body["spec"]["dataset"]["path"] = "ftp://files.example/train.jsonl"  # not a location form
    with pytest.raises(APIError) as caught:
        backend.create(namespace, body)
    error = caught.value
    assert error.status == 400 and error.param == "maap", error.message
    assert "is invalid" in error.message and "dataset" in error.message, error.message
    assert backend.list(namespace) == []


def test_pause_resume_and_cancel_patch_the_job_and_refuse_a_finished_one(
    gateway: Gateway, namespace
) -> None:
    backend = gateway.backend()
    job_id = backend.create(namespace, manifest(backend, namespace))["metadata"]["name"]
    assert backend.set_suspend(namespace, job_id, True)["spec"]["suspend"] is True
    assert jobs.openai_status(admin_get(gateway, namespace, job_id)) == "paused"
    assert backend.set_suspend(namespace, job_id, False)["spec"]["suspend"] is False
    cancelled = backend.cancel(namespace, job_id)
    assert cancelled["spec"]["suspend"] is True
    stamp = cancelled["metadata"]["annotations"][jobs.CANCELLED]
    assert abs(datetime.fromisoformat(stamp).timestamp() - time.time()) < 60
    assert jobs.openai_status(admin_get(gateway, namespace, job_id)) == "cancelled"
    for call in (lambda: backend.cancel(namespace, job_id),
                 lambda: backend.set_suspend(namespace, job_id, False)):  # fmt: skip
        with pytest.raises(APIError) as caught:
            call()
        assert caught.value.status == 400 and caught.value.code == "invalid_job_state"

    done = backend.create(namespace, manifest(backend, namespace))["metadata"]["name"]
    set_status(gateway, namespace, done, {"phase": "Failed"})
    with pytest.raises(APIError, match="is failed"):
        backend.set_suspend(namespace, done, True)
    with pytest.raises(APIError) as missing:
        backend.cancel(namespace, "ftjob-000000000000")
    assert missing.value.status == 404


# --- what happened -------------------------------------------------------------------------


def test_events_are_the_jobs_own_oldest_first(gateway: Gateway, namespace) -> None:
    backend = gateway.backend()
    created = backend.create(namespace, manifest(backend, namespace))
    job_id, uid = created["metadata"]["name"], created["metadata"]["uid"]
    t0 = datetime.now(UTC).replace(microsecond=0)

    def post(message: str, kind: str, seconds: int, owner_uid: str = uid) -> None:
        when = datetime.fromtimestamp(t0.timestamp() + seconds, UTC)
        gateway.core.create_namespaced_event(namespace, client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{job_id}."),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind="FineTuneJob", name=job_id,
                namespace=namespace, uid=owner_uid,
            ),
            type=kind, reason="Test", message=message,
            first_timestamp=when, last_timestamp=when, count=1,
            source=client.V1EventSource(component="maap-test"),
        ))  # fmt: skip

    post("training pod OOMKilled", "Warning", 5)
    post("Training started", "Normal", 1)
    post("Training: step 1", "Normal", 1)  # the same second: in the order posted
    post("an older job of the same name", "Normal", 0, owner_uid=str(uuid.uuid4()))
    found = backend.events(namespace, job_id)
    assert [(e.level, e.message) for e in found] == [
        ("info", "Training started"), ("info", "Training: step 1"),
        ("warn", "training pod OOMKilled"),
    ]  # fmt: skip
    assert found[0].time == t0.timestamp() + 1
    assert backend.events(namespace, "ftjob-000000000000") == []


def test_history_comes_from_the_history_configmap(gateway: Gateway, namespace) -> None:
    backend = gateway.backend()
    job_id = backend.create(namespace, manifest(backend, namespace))["metadata"]["name"]
    assert backend.history(namespace, job_id) == JobHistory()
    history = JobHistory(
        points=[LogPoint(step=1, time=1.0, train_loss=2.5), LogPoint(step=2, time=2.0,
                                                                     valid_loss=2.1)],
        checkpoints=[CheckpointPoint(step=2, time=2.0, path="checkpoint-2", train_loss=2.4)],
    )  # fmt: skip
    gateway.core.create_namespaced_config_map(
        namespace, {"metadata": {"name": f"{job_id}-history"},
                    "data": history_configmap_data(history)},
    )  # fmt: skip
    assert backend.history(namespace, job_id) == history


# --- serving -------------------------------------------------------------------------------


def test_served_models_are_the_ready_jobs_with_their_tokens(gateway: Gateway, namespace) -> None:
    backend = gateway.backend()
    ready = backend.create(namespace, manifest(backend, namespace, suffix="bot"))
    starting = backend.create(namespace, manifest(backend, namespace))
    name = ready["metadata"]["name"]
    gateway.core.create_namespaced_secret(
        namespace, {"metadata": {"name": f"{name}-serving-auth"}, "stringData": {"token": "t0k"}}
    )
    endpoint = f"http://{name}-server.{namespace}.svc:8000/v1"
    set_status(gateway, namespace, name, {
        "phase": "Serving", "endpoint": endpoint, "authSecret": f"{name}-serving-auth",
        "conditions": [condition("ServingReady")],
    })  # fmt: skip
    set_status(gateway, namespace, starting["metadata"]["name"], {
        "phase": "Serving", "endpoint": endpoint,
        "conditions": [condition("ServingReady", "False", "Starting")],
    })  # fmt: skip
    [model] = backend.served_models(namespace)
    assert model.name == jobs.fine_tuned_model_name(admin_get(gateway, namespace, name))
    assert model.name.startswith(f"ft:{PRESET}:{namespace}:bot:")
    assert model.upstream == f"http://{name}-server.{namespace}.svc:8000"
    assert (model.upstream_model, model.token, model.parent) == (name, "t0k", PRESET)


# --- API keys ------------------------------------------------------------------------------


def test_secret_keys_follow_the_secrets(gateway: Gateway, caplog) -> None:
    key = "sk-" + uuid.uuid4().hex
    keys = SecretKeys(gateway.api, gateway.namespace, refresh_seconds=0.3)
    try:
        assert keys.namespace_for(key) is None
        name = f"key-{uuid.uuid4().hex[:6]}"
        with caplog.at_level(logging.WARNING, logger="maap.gateway.keys"):
            gateway.add_key(f"{name}-bad", {"apiKey": "sk-" + "x" * 20})  # no namespace
            gateway.add_key(name, {"apiKey": key, "namespace": "team-a"})
            wait_until("the new key", lambda: keys.namespace_for(key) == "team-a", 10)
        assert f"{name}-bad skipped: no data key namespace" in caplog.text
        assert (
            keys.namespace_for(key + "x") is None and keys.namespace_for("sk-" + "x" * 20) is None
        )
        gateway.core.delete_namespaced_secret(name, gateway.namespace)
        wait_until("the deleted key to stop working", lambda: keys.namespace_for(key) is None, 10)
    finally:
        keys.stop()


# --- the whole API, with the operator running the jobs -------------------------------------


class GatewayServer:
    """The gateway app served by uvicorn in a thread of this process."""

    def __init__(self, app: Any, port: int) -> None:
        self.port = port
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> GatewayServer:
        self.thread.start()
        wait_until("the gateway to listen", lambda: self.server.started, 20)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture
def operator(control_plane, tmp_path) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(Path(control_plane.kubeconfig), tmp_path / "operator.log")
    proc.start()
    yield proc
    proc.stop()


def test_openai_client_fine_tunes_through_the_gateway_on_the_cluster(
    gateway: Gateway, namespace, other, operator, tmp_path: Path
) -> None:
    key, other_key = "sk-" + uuid.uuid4().hex, "sk-" + uuid.uuid4().hex
    gateway.add_key(f"team-{uuid.uuid4().hex[:6]}", {"apiKey": key, "namespace": namespace})
    gateway.add_key(f"team-{uuid.uuid4().hex[:6]}", {"apiKey": other_key, "namespace": other})
    keys = SecretKeys(gateway.api, gateway.namespace, refresh_seconds=0.5)
    storage_class = f"sc-gw-{uuid.uuid4().hex[:6]}"
    for _ in range(2):
        make_volume(gateway.core, storage_class)
    extra = {"maap": {"storage": {"size": "1Gi", "storageClassName": storage_class},
                      "serving": {"replicas": 1, "auth": {"enabled": True}}}}  # fmt: skip
    port = free_port()
    backend = gateway.backend(internal_url=f"http://127.0.0.1:{port}")
    app = create_app(backend, keys, FileStore(tmp_path / "files"), GatewaySettings(FILE_SECRET))
    try:
        with GatewayServer(app, port):
            base = f"http://127.0.0.1:{port}/v1"
            ours = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
            theirs = openai.OpenAI(base_url=base, api_key=other_key, max_retries=0)
            uploaded = ours.files.create(file=("train.jsonl", io.BytesIO(ROWS * 4)),
                                         purpose="fine-tune")  # fmt: skip
            job = ours.fine_tuning.jobs.create(
                model=PRESET, training_file=uploaded.id, suffix="e2e", extra_body=extra
            )
            assert job.status in ("queued", "validating_files") and job.fine_tuned_model is None
            stored = admin_get(gateway, namespace, job.id)
            assert stored["spec"]["dataset"]["path"].startswith(f"http://127.0.0.1:{port}/")

            def finished() -> Any:
                got = ours.fine_tuning.jobs.retrieve(job.id)
                return got if got.status in jobs.TERMINAL else None

            done = wait_until(f"{job.id} to succeed", finished, 180, operator)
            assert done.status == "succeeded", done
            assert done.fine_tuned_model == f"ft:{PRESET}:{namespace}:e2e:{jobs.short_id(job.id)}"
            models = {m.id for m in ours.models.list()}
            assert done.fine_tuned_model in models and PRESET in models
            assert done.fine_tuned_model not in {m.id for m in theirs.models.list()}
            # The operator's Events, newest first: each phase in pipeline order.
            events = ours.fine_tuning.jobs.list_events(job.id, limit=100).data
            assert all(e.object == "fine_tuning.job.event" for e in events)
            phases = [e.message.split(":")[0] for e in reversed(events)]
            pipeline = ["Fetching", "Training", "Exporting", "Serving"]
            assert [p for p in dict.fromkeys(phases) if p in pipeline] == pipeline, phases
            assert ours.fine_tuning.jobs.checkpoints.list(job.id).data == []

            # Another tenant: the job and the model do not exist for it.
            with pytest.raises(openai.NotFoundError):
                theirs.fine_tuning.jobs.retrieve(job.id)
            with pytest.raises(openai.NotFoundError):
                theirs.chat.completions.create(
                    model=done.fine_tuned_model, messages=[{"role": "user", "content": "hi"}]
                )
            # kwok runs no server behind the Service: the route is right, the answer a 503.
            with pytest.raises(openai.APIStatusError) as unreachable:
                ours.chat.completions.create(
                    model=done.fine_tuned_model, messages=[{"role": "user", "content": "hi"}]
                )
            assert unreachable.value.status_code == 503
            assert "is not reachable" in str(unreachable.value)

            # A second job: paused, resumed, cancelled; a finished one cannot be resumed.
            second = ours.fine_tuning.jobs.create(
                model=PRESET, training_file=uploaded.id, extra_body=extra
            )
            assert ours.fine_tuning.jobs.pause(second.id).status == "paused"
            assert admin_get(gateway, namespace, second.id)["spec"]["suspend"] is True
            assert ours.fine_tuning.jobs.resume(second.id).status != "paused"
            assert ours.fine_tuning.jobs.cancel(second.id).status == "cancelled"
            with pytest.raises(openai.BadRequestError) as refused:
                ours.fine_tuning.jobs.resume(second.id)
            assert refused.value.code == "invalid_job_state"
            assert {j.id for j in ours.fine_tuning.jobs.list()} == {second.id, job.id}
            assert list(theirs.fine_tuning.jobs.list()) == []
            with pytest.raises(openai.NotFoundError):
                ours.fine_tuning.jobs.retrieve("ftjob-000000000000")
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=base, api_key="sk-unknown-0000000000",
                              max_retries=0).models.list()  # fmt: skip
    finally:
        keys.stop()
        delete_jobs(gateway, namespace, operator)


def delete_jobs(gateway: Gateway, namespace: str, operator: OperatorProcess) -> None:
    """Delete the jobs while the operator still runs (it removes its finalizer)."""

    def names() -> list[str]:
        found = gateway.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        return [o["metadata"]["name"] for o in found["items"]]

    for name in names():
        try:
            gateway.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
    wait_until("the jobs to be deleted", lambda: not names(), 60, operator)


# --- the chart's gateway, run as the chart configures it -----------------------------------


def test_chart_installs_a_gateway_that_runs_with_its_own_rbac_and_keeps_its_secret(
    control_plane, api_client, namespace, other, tmp_path: Path
) -> None:
    """Install with gateway.enabled into a namespace that enforces Pod Security restricted;
    then run `maap gateway` with the Deployment's own arguments, its Secret and its
    ServiceAccount's token, and drive it with the openai client."""
    from test_chart_install import helm, token_kubeconfig

    from tests.test_chart import CHART

    core = client.CoreV1Api(api_client)
    apps = client.AppsV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    core.patch_namespace(namespace, {"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted"}}})  # fmt: skip
    storage_class = f"sc-gwchart-{uuid.uuid4().hex[:6]}"
    make_volume(core, storage_class)
    release = f"gw-{uuid.uuid4().hex[:6]}"
    values = {"gateway": {"enabled": True, "storage": {"storageClassName": storage_class,
                                                       "size": "1Gi"}}}  # fmt: skip
    install = ("--namespace", namespace, "--wait", "--timeout", "2m")
    done = helm(control_plane, "install", release, str(CHART), *install, values=values,
                tmp=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    name = f"{release}-maap-gateway"
    assert f"http://{name}.{namespace}.svc:8080/v1" in done.stdout  # NOTES.txt
    deployment = apps.read_namespaced_deployment(name, namespace)
    assert deployment.status.ready_replicas == 1  # admitted under restricted, claim bound

    secret_name = f"{name}-file-signing"
    signing = core.read_namespaced_secret(secret_name, namespace).data["fileSecret"]
    done = helm(control_plane, "upgrade", release, str(CHART), *install, values=values,
                tmp=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert core.read_namespaced_secret(secret_name, namespace).data["fileSecret"] == signing

    key = "sk-" + uuid.uuid4().hex
    core.create_namespaced_secret(namespace, {
        "metadata": {"name": "team-key", "labels": {API_KEY_LABEL: "true"}},
        "stringData": {"apiKey": key, "namespace": other},
    })  # fmt: skip
    [container] = deployment.spec.template.spec.containers
    spec = deployment.spec.template.spec
    kubeconfig = token_kubeconfig(control_plane, core, spec.service_account_name, namespace,
                                  tmp_path / "gateway.kubeconfig")  # fmt: skip
    port = free_port()
    env = {"MAAP_GATEWAY_FILE_SECRET": base64.b64decode(signing).decode()}
    process = MaapProcess(kubeconfig, tmp_path / "gateway.log")
    # The chart's arguments; only where it listens and keeps files are this machine's.
    process.spawn(sys.executable, [*container.args, "--host=127.0.0.1", f"--port={port}",
                                   f"--state-dir={tmp_path / 'state'}"], env)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until("the gateway to answer", lambda: _healthy(base), 30, process)
        ours = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
        uploaded = ours.files.create(file=("rows.jsonl", io.BytesIO(ROWS)), purpose="fine-tune")
        job = ours.fine_tuning.jobs.create(model=PRESET, training_file=uploaded.id)
        stored = custom.get_namespaced_custom_object(GROUP, VERSION, other, PLURAL, job.id)
        url = stored["spec"]["dataset"]["path"]
        internal = f"http://{name}.{namespace}.svc:8080"
        assert url.startswith(f"{internal}/internal/files/{other}/{uploaded.id}?"), url
        # What a training pod does with it (here through 127.0.0.1 instead of the Service).
        fetched = httpx.get(url.replace(internal, base), timeout=10)
        assert fetched.status_code == 200 and fetched.content == ROWS
        tampered = httpx.get(url.replace(internal, base).replace(other, namespace), timeout=10)
        assert tampered.status_code in (403, 404)
        assert [j.id for j in ours.fine_tuning.jobs.list()] == [job.id]
        assert ours.fine_tuning.jobs.cancel(job.id).status == "cancelled"
        assert PRESET in {m.id for m in ours.models.list()}
        denied = re.findall(r"cannot \w+ resource[^\n]*", process.log())
        assert not denied, denied
    finally:
        process.stop()
    done = helm(control_plane, "uninstall", release, "--namespace", namespace, "--wait",
                tmp=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Uploaded files outlive the release (helm.sh/resource-policy: keep).
    core.read_namespaced_persistent_volume_claim(f"{name}-files", namespace)


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
