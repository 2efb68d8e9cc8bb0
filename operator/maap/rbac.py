"""The least-privilege RBAC of the operator and of the gateway: every verb here is one the
code uses.

Kept as data so the Helm chart renders the same rules (`maap rbac`), and tests run the
operator and the gateway's cluster backend under exactly these rules against the real API
server.
"""

from __future__ import annotations

from typing import Any

import yaml
from maap_api.cachedmodel import PLURAL as CACHED_MODELS
from maap_api.finetunejob import GROUP, PLURAL

# (apiGroups, resources, verbs) and why.
RULES: list[tuple[list[str], list[str], list[str]]] = [
    # Watch FineTuneJobs; kopf patches its annotations; ttlSecondsAfterFinished deletes.
    ([GROUP], [PLURAL], ["get", "list", "watch", "patch", "delete"]),
    ([GROUP], [f"{PLURAL}/status"], ["get", "patch"]),
    # The shared model cache: one CachedModel per base model, created by the first job on it;
    # kopf patches its annotations; its controller writes the status.
    ([GROUP], [CACHED_MODELS], ["get", "list", "watch", "create", "patch"]),
    ([GROUP], [f"{CACHED_MODELS}/status"], ["get", "patch"]),
    # Children: server-side apply (patch; create for the first apply) brings each to what
    # its builder says; list/watch feed the in-memory caches that replace polling.
    ([""], ["configmaps"], ["get", "list", "watch", "create", "patch"]),
    ([""], ["persistentvolumeclaims"], ["get", "create"]),  # created once
    # delete: the server goes when serving is switched off.
    ([""], ["services"], ["get", "list", "watch", "create", "patch", "delete"]),
    ([""], ["secrets"], ["get", "create"]),  # the progress and serving tokens: create once
    # delete: a failed model download is retried when a new job asks for that model.
    (["batch"], ["jobs"], ["get", "list", "watch", "create", "patch", "delete"]),
    (["apps"], ["deployments"], ["get", "list", "watch", "create", "patch", "delete"]),
    # Why a stage's pods do not run (blockers.py), a failed pod's termination message.
    ([""], ["pods"], ["list", "watch"]),
    # Kopf's Events for users; list: a Job's FailedCreate warnings (e.g. Pod Security).
    ([""], ["events"], ["create", "list"]),
    ([""], ["namespaces"], ["list", "watch"]),
    (["apiextensions.k8s.io"], ["customresourcedefinitions"], ["list", "watch"]),
    # High availability (Kopf peering): each replica watches the peering object and patches
    # its keep-alive into it; a KopfPeering per watched namespace, or one ClusterKopfPeering.
    # get: `maap operator` checks at start that the object exists (maap/peering.py).
    (["kopf.dev"], ["kopfpeerings"], ["get", "list", "watch", "patch"]),
    (["kopf.dev"], ["clusterkopfpeerings"], ["get", "list", "watch", "patch"]),
]

# The gateway (`maap gateway --kube`, the chart's optional Deployment). Tenants are the
# namespaces its API keys name, so these hold in every namespace (a ClusterRole).
GATEWAY_RULES: list[tuple[list[str], list[str], list[str]]] = [
    # A tenant's jobs: create, read, list (and list in all namespaces, for the webhooks);
    # pause, resume and cancel are merge patches of spec.suspend and an annotation.
    ([GROUP], [PLURAL], ["get", "list", "create", "patch"]),
    ([""], ["events"], ["list"]),  # a job's Events: its /events
    ([""], ["configmaps"], ["get"]),  # a job's history ConfigMap: metrics, checkpoints
    ([""], ["secrets"], ["get"]),  # a served job's bearer token (status.authSecret)
]
# In the gateway's own namespace only (a Role): the API-key Secrets (maap.gateway.kube_keys).
GATEWAY_OWN_NAMESPACE_RULES: list[tuple[list[str], list[str], list[str]]] = [
    ([""], ["secrets"], ["list"]),
]

# The cluster-scoped resources among RULES. When the operator watches a list of namespaces
# (the Helm chart's `watchNamespaces`), everything else is granted per namespace by a Role;
# only these read-only discovery rules stay cluster-wide (kopf uses them to notice new
# namespaces and CRDs; without them it logs a warning and stops noticing). The chart
# leaves clusterkopfpeerings out there: a namespaced operator peers through KopfPeerings.
CLUSTER_SCOPED = frozenset({"namespaces", "customresourcedefinitions", "clusterkopfpeerings"})


def _rule(groups: list[str], resources: list[str], verbs: list[str]) -> dict[str, Any]:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


def rules_by_scope() -> dict[str, list[dict[str, Any]]]:
    """RULES split into namespaced and cluster-scoped ones, in RULES order."""
    out: dict[str, list[dict[str, Any]]] = {"namespaced": [], "cluster": []}
    for groups, resources, verbs in RULES:
        scoped = {r in CLUSTER_SCOPED for r in resources}
        if len(scoped) != 1:
            raise ValueError(f"rule for {resources} mixes namespaced and cluster-scoped resources")
        out["cluster" if scoped.pop() else "namespaced"].append(_rule(groups, resources, verbs))
    return out


def gateway_rules() -> dict[str, list[dict[str, Any]]]:
    """GATEWAY_RULES (`cluster`) and GATEWAY_OWN_NAMESPACE_RULES (`ownNamespace`)."""
    return {
        "cluster": [_rule(*r) for r in GATEWAY_RULES],
        "ownNamespace": [_rule(*r) for r in GATEWAY_OWN_NAMESPACE_RULES],
    }


def render_chart_rules() -> str:
    """The rules as the Helm chart reads them (charts/maap/files/rbac-rules.yaml)."""
    header = (
        "# Generated by `maap rbac --chart-rules` from operator/maap/rbac.py RULES and\n"
        "# GATEWAY_RULES. Do not edit by hand: run `make generate`. A test fails when this\n"
        "# file drifts.\n"
    )
    document = {**rules_by_scope(), "gateway": gateway_rules()}
    return header + yaml.safe_dump(document, sort_keys=False)


def cluster_role(name: str = "maap-operator") -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "maap"}},
        "rules": [_rule(groups, resources, verbs) for groups, resources, verbs in RULES],
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


def render_gateway_rbac(namespace: str, name: str = "maap-gateway") -> list[dict[str, Any]]:
    """The gateway's ServiceAccount in `namespace` and its rules, as the chart binds them."""
    rules = gateway_rules()
    subject = [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
    labels = {"app.kubernetes.io/name": "maap", "app.kubernetes.io/component": "gateway"}

    def binding(kind: str, role_kind: str, meta: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": kind,
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name},
            "subjects": subject,
        }

    own = {"name": name, "namespace": namespace, "labels": labels}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": own},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name, "labels": labels},
            "rules": rules["cluster"],
        },
        binding("ClusterRoleBinding", "ClusterRole", {"name": name, "labels": labels}),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": own,
            "rules": rules["ownNamespace"],
        },
        binding("RoleBinding", "Role", own),
    ]
