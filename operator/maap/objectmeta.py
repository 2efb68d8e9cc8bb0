"""Names, labels and owner references of everything maap creates for a FineTuneJob.

Every object is labelled `app.kubernetes.io/*`, named after the FineTuneJob, and owned by
it (deleting the FineTuneJob garbage-collects everything).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from maap_api.finetunejob import API_VERSION, KIND, FineTuneJob

JOB_LABEL = "maap.dev/finetunejob"


@dataclass(frozen=True)
class Names:
    job: str

    @property
    def config(self) -> str:
        return f"{self.job}-config"

    @property
    def artifacts(self) -> str:
        return f"{self.job}-artifacts"

    @property
    def fetch(self) -> str:
        return f"{self.job}-fetch"

    @property
    def publish(self) -> str:
        return f"{self.job}-publish"

    @property
    def train(self) -> str:
        return f"{self.job}-train"

    @property
    def export(self) -> str:
        return f"{self.job}-export"

    @property
    def server(self) -> str:
        return f"{self.job}-server"

    @property
    def progress_secret(self) -> str:
        return f"{self.job}-progress"

    @property
    def serving_auth_secret(self) -> str:
        return f"{self.job}-serving-auth"

    @property
    def history_configmap(self) -> str:
        """The training history (maap_api.history), written by the progress receiver."""
        return f"{self.job}-history"


def labels(job: FineTuneJob, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "maap",
        "app.kubernetes.io/instance": job.metadata.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "maap",
        "app.kubernetes.io/managed-by": "maap-operator",
        JOB_LABEL: job.metadata.name,
    }


def selector_labels(job: FineTuneJob, component: str) -> dict[str, str]:
    return {JOB_LABEL: job.metadata.name, "app.kubernetes.io/component": component}


def pod_metadata(job: FineTuneJob, component: str) -> dict[str, Any]:
    placement = job.spec.placement
    meta: dict[str, Any] = {"labels": {**placement.pod_labels, **labels(job, component)}}
    if placement.pod_annotations:
        meta["annotations"] = dict(placement.pod_annotations)
    return meta


def owner_reference(job: FineTuneJob, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.metadata.name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_metadata(job: FineTuneJob, uid: str, name: str, component: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": labels(job, component),
        "ownerReferences": [owner_reference(job, uid)],
    }
    if job.metadata.namespace:
        meta["namespace"] = job.metadata.namespace
    return meta
