"""The few API calls the operator makes, idempotent: read, get-or-create, patch.

Every call here is listed in the operator's RBAC (charts/maap, tests check it).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

log = logging.getLogger("maap.operator")


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
        }[kind]

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

    def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read(self.batch.read_namespaced_job, name, namespace)

    def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read(self.apps.read_namespaced_deployment, name, namespace)

    def _read(self, call: Any, name: str, namespace: str) -> dict[str, Any] | None:
        """The object as plain JSON (the client's models are slow to build), or None."""
        try:
            response = call(name, namespace, _preload_content=False)
            return json.loads(response.data)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        response = self.core.list_namespaced_pod(
            namespace, label_selector=label_selector, _preload_content=False
        )
        return list(json.loads(response.data).get("items") or [])

    def list_events(self, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
        """The Events about one object (e.g. a Job's FailedCreate)."""
        response = self.core.list_namespaced_event(
            namespace,
            field_selector=f"involvedObject.kind={kind},involvedObject.name={name}",
            _preload_content=False,
        )
        return list(json.loads(response.data).get("items") or [])

    def failure_message(self, namespace: str, job_name: str) -> str:
        """The termination message of the Job's most recent failed pod, if it left one."""
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}")
        messages = []
        for pod in pods.items:
            for status in pod.status.container_statuses or []:
                terminated = status.state.terminated if status.state else None
                if terminated and terminated.exit_code and terminated.message:
                    messages.append((terminated.finished_at, terminated.message.strip()))
        if not messages:
            return ""
        messages.sort(key=lambda m: m[0] or 0)
        return messages[-1][1].splitlines()[-1][:1000]

    def delete_finetunejob(self, namespace: str, name: str) -> None:
        from maap.api import GROUP, PLURAL, VERSION

        try:
            client.CustomObjectsApi(self.api).delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def patch_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        self.batch.patch_namespaced_job(name, namespace, {"spec": {"suspend": suspend}})

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        self.apps.patch_namespaced_deployment(name, namespace, {"spec": {"replicas": replicas}})
