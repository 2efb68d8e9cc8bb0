"""In-memory caches of FineTuneJobs and their children, fed by Kopf's watch streams.

Reconciles read children from here, never with GETs: a job whose children do not change
costs no API requests. Each child kind is watched once for the whole operator, filtered
server-side to maap's own objects, and indexed by the FineTuneJob that owns it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from maap_api.cachedmodel import PLURAL as CACHED_MODELS
from maap_api.finetunejob import GROUP, PLURAL, VERSION

from maap.cache_builders import CACHE_LABEL
from maap.objectmeta import JOB_LABEL

MANAGED_BY = "app.kubernetes.io/managed-by=maap-operator"
# (group, version, plural) of every child kind the reconcile reads.
CHILD_KINDS: dict[str, tuple[str, str, str]] = {
    "Job": ("batch", "v1", "jobs"),
    "Deployment": ("apps", "v1", "deployments"),
    "Service": ("", "v1", "services"),
    "ConfigMap": ("", "v1", "configmaps"),
    "Pod": ("", "v1", "pods"),
}
OwnerKey = tuple[str, str]  # (namespace, FineTuneJob name)


def configure_selectors(settings: kopf.OperatorSettings) -> None:
    """Watch only the children maap made: the API server filters, not the operator."""
    for group, _version, plural in CHILD_KINDS.values():
        settings.watching.label_selectors[group, plural] = MANAGED_BY


def _slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """A deep, plain copy without managedFields (large, and never read)."""
    out = copy.deepcopy(dict(body))
    out["metadata"] = {k: v for k, v in out["metadata"].items() if k != "managedFields"}
    return out


# One indexer per kind (kopf names an index after its function, and passes it to every
# handler as a keyword argument of that name).
@kopf.index(GROUP, VERSION, PLURAL)
def finetunejobs(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[OwnerKey, Any]:
    return {(namespace, name): _slim(body)}


def _by_owner(namespace: str, labels: Mapping[str, str], body: kopf.Body) -> dict[OwnerKey, Any]:
    owner = labels.get(JOB_LABEL)
    return {(namespace, owner): _slim(body)} if owner else {}


@kopf.index("batch", "v1", "jobs", labels={JOB_LABEL: kopf.PRESENT})
def child_jobs(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict:
    return _by_owner(namespace, labels, body)


@kopf.index("apps", "v1", "deployments", labels={JOB_LABEL: kopf.PRESENT})
def child_deployments(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict:
    return _by_owner(namespace, labels, body)


@kopf.index("v1", "services", labels={JOB_LABEL: kopf.PRESENT})
def child_services(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict:
    return _by_owner(namespace, labels, body)


@kopf.index("v1", "configmaps", labels={JOB_LABEL: kopf.PRESENT})
def child_configmaps(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict:
    return _by_owner(namespace, labels, body)


@kopf.index("v1", "pods", labels={JOB_LABEL: kopf.PRESENT})
def child_pods(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict:
    return _by_owner(namespace, labels, body)


@kopf.index(GROUP, VERSION, CACHED_MODELS)
def cachedmodels(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {namespace: _slim(body)}


def _by_cached_model(namespace: str, labels: Mapping[str, str], body: kopf.Body) -> dict:
    return {(namespace, labels[CACHE_LABEL]): _slim(body)}


@kopf.index("batch", "v1", "jobs", labels={CACHE_LABEL: kopf.PRESENT})
def cache_jobs(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict:
    return _by_cached_model(namespace, labels, body)


@kopf.index("v1", "pods", labels={CACHE_LABEL: kopf.PRESENT})
def cache_pods(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict:
    return _by_cached_model(namespace, labels, body)


@dataclass(frozen=True)
class Children:
    """One FineTuneJob's children as the watches last saw them, by kind and name."""

    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    configmaps: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: list[dict[str, Any]] = field(default_factory=list)
    # The namespace's CachedModels (shared by its jobs), by name.
    cachedmodels: dict[str, dict[str, Any]] = field(default_factory=dict)

    def of_kind(self, kind: str) -> dict[str, dict[str, Any]]:
        return {
            "Job": self.jobs,
            "Deployment": self.deployments,
            "Service": self.services,
            "ConfigMap": self.configmaps,
            "CachedModel": self.cachedmodels,
        }[kind]

    def pods_matching(self, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        return [
            pod
            for pod in self.pods
            if all((pod["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
        ]


def _named(store: Iterable[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    return {item["metadata"]["name"]: item for item in store or ()}


def snapshot(indexes: Mapping[str, Any], key: OwnerKey) -> Children:
    """Copy one owner's children out of the indexes (call it on the event loop's thread,
    where kopf updates them, and hand the copy to a worker thread)."""
    return Children(
        jobs=_named(indexes["child_jobs"].get(key)),
        deployments=_named(indexes["child_deployments"].get(key)),
        services=_named(indexes["child_services"].get(key)),
        configmaps=_named(indexes["child_configmaps"].get(key)),
        pods=list(indexes["child_pods"].get(key) or ()),
        cachedmodels=_named(indexes["cachedmodels"].get(key[0])),
    )


def owner_body(indexes: Mapping[str, Any], key: OwnerKey) -> dict[str, Any] | None:
    store = indexes["finetunejobs"].get(key)
    return next(iter(store), None) if store else None
