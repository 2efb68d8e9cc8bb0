"""The gateway's jobs in a cluster: FineTuneJobs the operator runs, read and written through
the Kubernetes API.

A tenant is a namespace, and only FineTuneJobs labelled maap.dev/gateway=true there are the
gateway's: a job another namespace holds, or one applied by hand, is never returned. Every
call is blocking (the routes run them in a worker thread) and every API failure becomes one
OpenAI-style error that says what the API server said.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException
from maap_api.finetunejob import GROUP, KIND, PLURAL, VERSION
from maap_api.history import JobHistory, parse_history_configmap

from maap.gateway import jobs
from maap.gateway.backend import JobEvent, ServedModel
from maap.gateway.errors import APIError, not_found
from maap.gateway.file_urls import signed_file_url
from maap.kube import backoff_after_conflict
from maap.objectmeta import Names

GATEWAY_SELECTOR = f"{jobs.GATEWAY_LABEL}=true"
TOKEN_KEY = "token"  # the key of the serving auth Secret (maap.builders)
TOKEN_CACHE_SECONDS = 30.0  # every chat request lists the served models
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_PATCH_ATTEMPTS = 8
JOB_PARAM = "fine_tuning_job_id"


class KubeBackend:
    """A JobBackend over FineTuneJobs (maap.dev/v1alpha1) in the tenants' namespaces."""

    def __init__(
        self,
        api_client: client.ApiClient,
        gateway_namespace: str,
        internal_url: str,
        file_secret: bytes,
    ) -> None:
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.gateway_namespace = gateway_namespace
        self.internal_url = internal_url
        self.file_secret = file_secret
        self._tokens: dict[tuple[str, str], tuple[float, str | None]] = {}
        self._tokens_lock = threading.Lock()

    # -- jobs -------------------------------------------------------------------------------

    def create(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        with kube_errors(f"create FineTuneJob in namespace {namespace}"):
            return self.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, manifest
            )

    def get(self, namespace: str, job_id: str) -> dict[str, Any] | None:
        if not _DNS_LABEL.match(job_id) or len(job_id) > 63:
            return None  # no object can have that name
        try:
            with kube_errors(f"read FineTuneJob {namespace}/{job_id}"):
                obj = self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, job_id
                )
        except APIError as exc:
            if exc.status == 404:
                return None
            raise
        return obj if is_gateway_job(obj) else None

    def list(self, namespace: str) -> list[dict[str, Any]]:
        with kube_errors(f"list FineTuneJobs in namespace {namespace}"):
            found = self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, label_selector=GATEWAY_SELECTOR
            )
        return [obj for obj in found.get("items", []) if is_gateway_job(obj)]

    def set_suspend(self, namespace: str, job_id: str, suspend: bool) -> dict[str, Any]:
        """Pause: the operator suspends the training Job and the trainer saves a checkpoint
        on SIGTERM; resume: training continues from the newest checkpoint."""
        action = "pause" if suspend else "resume"

        def patch(obj: dict[str, Any]) -> dict[str, Any]:
            refuse_if_finished(obj, action)
            return {"spec": {"suspend": suspend}}

        return self._patch(namespace, job_id, patch)

    def cancel(self, namespace: str, job_id: str) -> dict[str, Any]:
        def patch(obj: dict[str, Any]) -> dict[str, Any]:
            refuse_if_finished(obj, "cancel")
            return {
                "metadata": {"annotations": {jobs.CANCELLED: rfc3339(time.time())}},
                "spec": {"suspend": True},
            }

        return self._patch(namespace, job_id, patch)

    def _patch(self, namespace: str, job_id: str, change: Any) -> dict[str, Any]:
        """A merge patch of what `change(current)` says, on the version it was decided on:
        a job that moved in between (finished, say) is read again and decided again."""
        for attempt in range(_PATCH_ATTEMPTS):
            if attempt:  # the operator writes a new job's status several times in a row
                backoff_after_conflict(attempt)
            obj = self.get(namespace, job_id)
            if obj is None:
                raise not_found("fine-tuning job", job_id, JOB_PARAM)
            body = change(obj)
            body.setdefault("metadata", {})["resourceVersion"] = obj["metadata"]["resourceVersion"]
            try:
                with kube_errors(f"patch FineTuneJob {namespace}/{job_id}"):
                    return self.custom.patch_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL, job_id, body
                    )
            except APIError as exc:
                if exc.status != 409:
                    raise
        raise APIError(
            409,
            f"fine-tuning job {job_id} kept changing while being updated; try again",
            param=JOB_PARAM,
            code="conflict",
        )

    # -- what happened ----------------------------------------------------------------------

    def events(self, namespace: str, job_id: str) -> list[JobEvent]:
        obj = self.get(namespace, job_id)
        if obj is None:
            return []
        selector = f"involvedObject.kind={KIND},involvedObject.name={job_id}"
        with kube_errors(f"list the Events of FineTuneJob {namespace}/{job_id}"):
            found = self.core.list_namespaced_event(namespace, field_selector=selector)
        uid = obj["metadata"].get("uid")
        # A job deleted and created again under the same name has older Events: not its own.
        own = [e for e in found.items if not uid or e.involved_object.uid in (None, uid)]
        return [job_event(e) for e in sorted(own, key=event_order)]

    def history(self, namespace: str, job_id: str) -> JobHistory:
        name = Names(job_id).history_configmap
        try:
            with kube_errors(f"read ConfigMap {namespace}/{name}"):
                found = self.core.read_namespaced_config_map(name, namespace)
        except APIError as exc:
            if exc.status == 404:
                return JobHistory()  # nothing logged yet
            raise
        return parse_history_configmap(found.data)

    # -- serving ----------------------------------------------------------------------------

    def served_models(self, namespace: str) -> list[ServedModel]:
        served = []
        for obj in self.list(namespace):
            if not is_served(obj):
                continue
            secret = (obj.get("status") or {}).get("authSecret")
            token = self._token(namespace, secret) if secret else None
            served.append(served_model(obj, token))
        return served

    def _token(self, namespace: str, secret: str) -> str | None:
        key = (namespace, secret)
        now = time.monotonic()
        with self._tokens_lock:
            cached = self._tokens.get(key)
        if cached and now - cached[0] < TOKEN_CACHE_SECONDS:
            return cached[1]
        try:
            with kube_errors(f"read Secret {namespace}/{secret}"):
                data = self.core.read_namespaced_secret(secret, namespace).data or {}
        except APIError as exc:
            if exc.status != 404:
                raise
            data = {}
        token = decode_secret_value(data.get(TOKEN_KEY))
        with self._tokens_lock:
            self._tokens[key] = (now, token)
        return token

    # -- files and tenants ------------------------------------------------------------------

    def data_location(self, namespace: str, file_id: str, sha256: str) -> jobs.DataLocation:
        """A signed URL of this gateway: the fetch stage downloads it and checks sha256."""
        url = signed_file_url(self.internal_url, self.file_secret, namespace, file_id)
        return jobs.DataLocation(path=url, sha256=sha256)

    def namespaces(self) -> list[str]:
        with kube_errors("list FineTuneJobs in all namespaces"):
            found = self.custom.list_cluster_custom_object(
                GROUP, VERSION, PLURAL, label_selector=GATEWAY_SELECTOR
            )
        return sorted({o["metadata"]["namespace"] for o in found.get("items", [])})


# -- pure helpers ---------------------------------------------------------------------------


def is_gateway_job(obj: dict[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(jobs.GATEWAY_LABEL) == "true"


def refuse_if_finished(obj: dict[str, Any], action: str) -> None:
    state = jobs.openai_status(obj)
    if state in jobs.TERMINAL:
        raise APIError(
            400,
            f"fine-tuning job {obj['metadata']['name']} is {state}; a finished job cannot be "
            f"told to {action}",
            param=JOB_PARAM,
            code="invalid_job_state",
        )


def is_served(obj: dict[str, Any]) -> bool:
    """Serving, its server ready, and an endpoint to send requests to."""
    status = obj.get("status") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "ServingReady" and c.get("status") == "True" for c in conditions)
    return status.get("phase") == "Serving" and ready and bool(status.get("endpoint"))


def upstream_of(endpoint: str) -> str:
    """The server's base URL: status.endpoint is the OpenAI base (`http://svc.ns.svc:8000/v1`),
    the router appends `/v1/chat/completions` itself."""
    return endpoint.rstrip("/").removesuffix("/v1")


def served_model(obj: dict[str, Any], token: str | None) -> ServedModel:
    status, meta = obj.get("status") or {}, obj["metadata"]
    return ServedModel(
        name=jobs.fine_tuned_model_name(obj),
        upstream=upstream_of(status["endpoint"]),
        # The per-job server serves the model under the job's name (builders.server_deployment).
        upstream_model=meta["name"],
        token=token,
        parent=obj["spec"]["model"].get("preset"),
        created=jobs.unix_time(meta.get("creationTimestamp")) or 0,
    )


def job_event(event: client.CoreV1Event) -> JobEvent:
    """A Kubernetes Event as the gateway's JobEvent; a Warning is a `warn`."""
    when = (
        event.first_timestamp
        or event.event_time
        or event.last_timestamp
        or (event.metadata.creation_timestamp if event.metadata else None)
    )
    level = "warn" if event.type == "Warning" else "info"
    message = event.message or event.reason or ""
    return JobEvent(time=when.timestamp() if when else 0.0, level=level, message=message)


def event_order(event: client.CoreV1Event) -> tuple[float, int]:
    """Oldest first. Event times have whole seconds, and a pipeline under a fast scheduler
    moves several phases in one: within a second, the order the API server stored them in
    (resourceVersion, an etcd revision, grows with every write)."""
    version = (event.metadata.resource_version if event.metadata else None) or ""
    return job_event(event).time, int(version) if version.isdigit() else 0


def decode_secret_value(value: str | None) -> str | None:
    """A Secret's `data` value (base64) as text; None when empty or not base64 text."""
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True).decode().strip() or None
    except (binascii.Error, UnicodeDecodeError):
        return None


def rfc3339(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_message(exc: ApiException) -> str:
    """The API server's own message (its Status body), else the HTTP reason."""
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(exc.reason or f"HTTP {exc.status}")


def status_details(exc: ApiException) -> dict[str, Any]:
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return {}
    return (body.get("details") or {}) if isinstance(body, dict) else {}


def api_error(exc: ApiException, action: str) -> APIError:
    """The OpenAI-style error of a failed API call."""
    message = status_message(exc)
    status = exc.status or 0
    if status == 422:  # the CRD's schema or CEL rules refused the job
        return APIError(400, message, param="maap", code="invalid_fine_tuning_job")
    if status == 404 and status_details(exc).get("kind") == "namespaces":
        namespace = status_details(exc).get("name", "?")
        return APIError(
            400,
            f"namespace {namespace!r} of this API key does not exist in the cluster; ask the "
            "platform team to create it (or to map the key to an existing namespace)",
            code="namespace_not_found",
        )
    if status == 404 and "the server could not find the requested resource" in message:
        return APIError(
            503,
            f"cannot {action}: the FineTuneJob CRD is not installed in this cluster "
            "(install the maap chart)",
            code="crd_missing",
        )
    if status in (404, 409):
        return APIError(status, message, code="not_found" if status == 404 else "conflict")
    if status == 403 and "being terminated" in message:
        return APIError(400, f"cannot {action}: {message}", code="namespace_terminating")
    if status in (401, 403):
        return APIError(
            500,
            f"cannot {action}: the API server refused the gateway's ServiceAccount "
            f"({message}); check the gateway's RBAC (charts/maap, maap.rbac.GATEWAY_RULES)",
            code="forbidden",
        )
    return APIError(502, f"cannot {action}: the Kubernetes API answered {status}: {message}")


@contextmanager
def kube_errors(action: str) -> Iterator[None]:
    """Translate what the Kubernetes client raises into the gateway's APIError."""
    try:
        yield
    except ApiException as exc:
        raise api_error(exc, action) from None
    except urllib3.exceptions.HTTPError as exc:
        raise APIError(
            503,
            f"cannot {action}: the Kubernetes API server is not reachable ({type(exc).__name__})",
            code="kubernetes_unreachable",
        ) from None
