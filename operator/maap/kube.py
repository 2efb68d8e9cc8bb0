"""The few API calls the operator makes, idempotent: server-side apply, create-once, patch.

Reads come from the watch caches (maap.watches); what is here writes, plus the two lists a
stalled stage needs (a Job's Events).

Every call here is listed in the operator's RBAC (charts/maap, tests check it).
"""

from __future__ import annotations

import json
import logging
import random
import time
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from maap_api.cachedmodel import KIND as CACHED_MODEL_KIND
from maap_api.cachedmodel import PLURAL as CACHED_MODEL_PLURAL
from maap_api.finetunejob import GROUP, PLURAL, VERSION

log = logging.getLogger("maap.operator")

# The field manager of every server-side apply: the fields maap sets are maap's, and an
# apply that no longer sets one (say, the auth token env) removes it.
FIELD_MANAGER = "maap-operator"
_APPLY_CONTENT_TYPE = "application/apply-patch+yaml"


def load_config() -> None:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


class Kube:
    def __init__(self, api: client.ApiClient | None = None) -> None:
        self.api = api or client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)

    def _create_fn(self, kind: str):
        return {
            "ConfigMap": self.core.create_namespaced_config_map,
            "Secret": self.core.create_namespaced_secret,
            "PersistentVolumeClaim": self.core.create_namespaced_persistent_volume_claim,
            "Service": self.core.create_namespaced_service,
            "Job": self.batch.create_namespaced_job,
            "Deployment": self.apps.create_namespaced_deployment,
            CACHED_MODEL_KIND: self._create_cached_model,
        }[kind]

    def _create_cached_model(self, namespace: str, body: dict[str, Any], **kwargs: Any) -> Any:
        return client.CustomObjectsApi(self.api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, CACHED_MODEL_PLURAL, body, **kwargs
        )

    def patch_cached_model_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        client.CustomObjectsApi(self.api).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, CACHED_MODEL_PLURAL, name, {"status": status},
            _preload_content=False,
        )  # fmt: skip

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and its pods (a failed download, so that it runs again)."""
        try:
            self.batch.delete_namespaced_job(
                name, namespace, propagation_policy="Background", _preload_content=False
            )
            log.info("deleted Job %s/%s", namespace, name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def ensure(self, namespace: str, body: dict[str, Any] | None) -> bool:
        """Create the object unless it exists. True if this call created it."""
        if body is None:
            return False
        try:
            # No response models: deserialising them costs more than the request.
            self._create_fn(body["kind"])(namespace, body, _preload_content=False)
            log.info("created %s %s/%s", body["kind"], namespace, body["metadata"]["name"])
            return True
        except ApiException as exc:
            if exc.status == 409:  # already there: another reconcile or a restart got to it
                return False
            raise

    def _apply_fn(self, kind: str):
        return {
            "ConfigMap": self.core.patch_namespaced_config_map,
            "Service": self.core.patch_namespaced_service,
            "Deployment": self.apps.patch_namespaced_deployment,
        }[kind]

    def apply(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply: the object becomes what `body` says (created if absent)."""
        meta = body["metadata"]

        def apply() -> Any:
            return self._apply_fn(body["kind"])(
                meta["name"], namespace, body,
                field_manager=FIELD_MANAGER, force=True,
                _content_type=_APPLY_CONTENT_TYPE, _preload_content=False,
            )  # fmt: skip

        try:
            response = apply()
        except ApiException as exc:
            if exc.status != 422 or body["kind"] != "Service":
                raise
            # Someone changed a port by hand: ports are a list keyed by port number, so the
            # applied port would be added beside theirs (a duplicate name). Put the list
            # back first, then apply to own it again.
            self.core.patch_namespaced_service(
                meta["name"], namespace,
                {"spec": {"ports": [{"$patch": "replace"}, *body["spec"]["ports"]]}},
                _preload_content=False,
            )  # fmt: skip
            response = apply()
        log.info("applied %s %s/%s", body["kind"], namespace, meta["name"])
        return json.loads(response.data)

    def delete(self, namespace: str, kind: str, name: str) -> None:
        call = {
            "Service": self.core.delete_namespaced_service,
            "Deployment": self.apps.delete_namespaced_deployment,
        }[kind]
        try:
            call(name, namespace, propagation_policy="Background", _preload_content=False)
            log.info("deleted %s %s/%s", kind, namespace, name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch the FineTuneJob's status subresource (only the keys given)."""
        client.CustomObjectsApi(self.api).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status},
            _preload_content=False,
        )  # fmt: skip

    def list_events(self, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
        """The Events about one object (e.g. a Job's FailedCreate)."""
        response = self.core.list_namespaced_event(
            namespace,
            field_selector=f"involvedObject.kind={kind},involvedObject.name={name}",
            _preload_content=False,
        )
        return list(json.loads(response.data).get("items") or [])

    def delete_finetunejob(self, namespace: str, name: str) -> None:
        try:
            client.CustomObjectsApi(self.api).delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def patch_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        self.batch.patch_namespaced_job(name, namespace, {"spec": {"suspend": suspend}})


def backoff_after_conflict(attempt: int) -> None:
    """Wait before retrying a write refused with 409 (changed since read): a growing,
    jittered wait, so writers that collided once do not collide again in lockstep."""
    time.sleep(random.uniform(0, min(0.05 * 2**attempt, 1.0)))
