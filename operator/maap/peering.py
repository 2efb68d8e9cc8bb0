"""High availability: replicas of `maap operator` share the work through Kopf peering.

Each replica writes a keep-alive (priority, lifetime, last seen) into the `status` of one
peering object: a ClusterKopfPeering when it watches all namespaces, a KopfPeering in each
watched namespace otherwise. Kopf runs the replica with the highest priority and pauses the
others: their watch streams stop, so they neither act nor query FineTuneJobs. A replica that
exits cleanly removes its record and the next one resumes at once; one that dies (SIGKILL,
a lost node) is taken for dead once its record is LIFETIME_SECONDS old.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import kopf
from kubernetes import client
from kubernetes.client.rest import ApiException

GROUP, VERSION = "kopf.dev", "v1"

# How long a silent replica counts as alive. Kopf refreshes its own record 5 to 10 s before
# it expires, whatever the lifetime, so the margin against a slow keep-alive (and so against
# two active replicas) stays 5-10 s; a shorter lifetime only shortens the takeover after a
# crash (5-15 s here, against 50-60 s with Kopf's default of 60) for one PATCH per replica
# every 5-10 s.
LIFETIME_SECONDS = 15


def default_priority() -> int:
    """The oldest live replica is the active one: priority falls with the start time.

    A replica that joins later (a restarted standby, the new pod of a rolling update) then
    never preempts the one at work; it takes over only when that one is gone. Kopf pauses
    every replica when two share a priority, so it must be unique: microseconds are.
    An explicit `--priority` (any value >= 0, e.g. `kopf run --dev`'s 666) outranks them all.
    """
    return -(time.time_ns() // 1000)


def configure(settings: kopf.OperatorSettings) -> None:
    settings.peering.lifetime = LIFETIME_SECONDS


def _is_pattern(namespace: str) -> bool:
    return namespace.startswith("!") or any(c in namespace for c in "*?[,")


def missing_peerings(api: client.ApiClient, name: str, namespaces: Iterable[str]) -> list[str]:
    """The peering objects named `name` this operator needs and cannot find.

    Kopf would start paused and wait for them without a word; a typo in the name must fail
    at start instead. Namespace patterns (globs) are left to Kopf.
    """
    custom = client.CustomObjectsApi(api)
    wanted = [ns for ns in namespaces if not _is_pattern(ns)]
    targets: list[tuple[str | None, str]] = (
        [(ns, "kopfpeerings") for ns in wanted] if namespaces else [(None, "clusterkopfpeerings")]
    )
    missing = []
    for namespace, plural in targets:
        try:
            if namespace is None:
                custom.get_cluster_custom_object(GROUP, VERSION, plural, name)
            else:
                custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            kind = "ClusterKopfPeering" if namespace is None else f"KopfPeering in {namespace}"
            missing.append(f"{kind} {name!r}")
    return missing


def problem(name: str, namespaces: Iterable[str]) -> str | None:
    """Why `maap operator --peering NAME` cannot start, or None."""
    from maap.kube import load_config

    load_config()
    try:
        with client.ApiClient() as api:
            missing = missing_peerings(api, name, list(namespaces))
    except ApiException as exc:
        return f"--peering {name}: cannot read the peering object: {exc.status} {exc.reason}"
    if not missing:
        return None
    return (
        f"--peering {name}: no {', no '.join(missing)} (the Helm chart creates it; by hand: "
        "kubectl apply -f crds/kopfpeerings.kopf.dev.yaml, then create the object)"
    )
