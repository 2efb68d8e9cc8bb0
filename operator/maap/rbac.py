"""The least-privilege RBAC of the operator: every verb here is one the code uses.

Kept as data so the Helm chart renders the same rules (`maap rbac`), and a test runs the
operator under exactly these rules against the real API server.
"""

from __future__ import annotations

from typing import Any

import yaml

from maap.api import GROUP, PLURAL

# (apiGroups, resources, verbs) and why.
RULES: list[tuple[list[str], list[str], list[str]]] = [
    # Watch FineTuneJobs; kopf patches its annotations; ttlSecondsAfterFinished deletes.
    ([GROUP], [PLURAL], ["get", "list", "watch", "patch", "delete"]),
    ([GROUP], [f"{PLURAL}/status"], ["get", "patch"]),
    # Children: get-or-create, plus the patches the pipeline makes.
    ([""], ["configmaps", "persistentvolumeclaims", "services"], ["get", "create"]),
    ([""], ["secrets"], ["get", "create"]),  # the per-job progress token
    (["batch"], ["jobs"], ["get", "create", "patch"]),  # patch: spec.suspend
    (["apps"], ["deployments"], ["get", "create", "patch"]),  # patch: serving replicas
    ([""], ["pods"], ["list"]),  # the failed pod's termination message
    # Kopf: Events for users, and runtime discovery of namespaces and CRDs.
    ([""], ["events"], ["create"]),
    ([""], ["namespaces"], ["list", "watch"]),
    (["apiextensions.k8s.io"], ["customresourcedefinitions"], ["list", "watch"]),
]


def cluster_role(name: str = "maap-operator") -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "maap"}},
        "rules": [
            {"apiGroups": groups, "resources": resources, "verbs": verbs}
            for groups, resources, verbs in RULES
        ],
    }


def render_rbac(namespace: str = "maap-system", name: str = "maap-operator") -> str:
    documents = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace},
        },
        cluster_role(name),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]
    return yaml.safe_dump_all(documents, sort_keys=False)
