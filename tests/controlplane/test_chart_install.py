"""The Helm chart against the real API server: server-side dry run, install, and an operator
running with the chart's own ServiceAccount, arguments and environment.

Pods never run here (kwok), so the operator runs as a local process; everything else it
gets (credentials, RBAC, flags, variables) is what the installed chart gave it.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from maap.rbac import RULES, rules_by_scope
from test_operator import Cluster, MaapProcess, finetunejob, free_port, wait_until

from tests.test_chart import CHART, VALUES_MATRIX, helm_binary, kube_version

# The prometheus-operator ServiceMonitor CRD is not part of this cluster. This stand-in
# declares, with their documented types, only the fields the chart writes (so the dry run
# checks those and rejects any other field); it is not the full upstream schema.
_STRING = {"type": "string"}
_LABELS = {"type": "object", "additionalProperties": _STRING}
SERVICE_MONITOR_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {"kind": "ServiceMonitor", "plural": "servicemonitors",
                  "singular": "servicemonitor"},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "required": ["selector", "endpoints"], "properties": {
                    "selector": {"type": "object", "properties": {"matchLabels": _LABELS}},
                    "namespaceSelector": {"type": "object", "properties": {
                        "matchNames": {"type": "array", "items": _STRING},
                        "any": {"type": "boolean"},
                    }},
                    "endpoints": {"type": "array", "items": {"type": "object", "properties": {
                        "port": _STRING, "path": _STRING,
                        "interval": {**_STRING, "pattern": "^(0|(([0-9]+)(ms|s|m|h))+)$"},
                        "scrapeTimeout": {**_STRING, "pattern": "^(0|(([0-9]+)(ms|s|m|h))+)$"},
                    }}},
                }},
            }}},
        }],
    },
}  # fmt: skip


def helm(control_plane, *args: str, values: dict[str, Any] | None = None, tmp: Path):
    cmd = [helm_binary(), "--kubeconfig", str(control_plane.kubeconfig), *args]
    if values is not None:
        path = tmp / f"values-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(values))
        cmd += ["--values", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def service_monitor_crd(control_plane) -> Iterator[None]:
    ext = client.ApiextensionsV1Api(control_plane.api_client())
    try:
        ext.create_custom_resource_definition(SERVICE_MONITOR_CRD)
    except ApiException as exc:
        if exc.status != 409:
            raise

    def established() -> bool:
        crd = ext.read_custom_resource_definition(SERVICE_MONITOR_CRD["metadata"]["name"])
        return any(
            c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
        )

    wait_until("the ServiceMonitor CRD", established, 30)
    yield
    ext.delete_custom_resource_definition(SERVICE_MONITOR_CRD["metadata"]["name"])


@pytest.fixture
def watched(api_client) -> Iterator[list[str]]:
    """Two fresh namespaces for `watchNamespaces` (a Role can only go into one that exists)."""
    core = client.CoreV1Api(api_client)
    names = [f"watched-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    for name in names:
        core.create_namespace({"metadata": {"name": name, "labels": {"maap.dev/test": "1"}}})
    yield names
    for name in names:
        core.delete_namespace(name)


def with_namespaces(values: dict[str, Any], watched: list[str]) -> dict[str, Any]:
    values = dict(values)
    if "watchNamespaces" in values:
        values["watchNamespaces"] = watched[: len(values["watchNamespaces"])]
    return values


def render(control_plane, values: dict[str, Any], namespace: str, tmp: Path) -> str:
    done = helm(
        control_plane, "template", f"rel-{uuid.uuid4().hex[:6]}", str(CHART),
        "--namespace", namespace, "--include-crds", "--kube-version", kube_version(),
        values=values, tmp=tmp,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def dry_run(control_plane, manifest: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    path = tmp / f"rendered-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(manifest)
    return control_plane.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-f", str(path), check=False
    )


@pytest.mark.parametrize("case", sorted(VALUES_MATRIX))
def test_rendered_chart_passes_server_side_dry_run(
    case: str, control_plane, namespace, watched, service_monitor_crd, tmp_path: Path
) -> None:
    values = with_namespaces(VALUES_MATRIX[case], watched)
    manifest = render(control_plane, values, namespace, tmp_path)
    done = dry_run(control_plane, manifest, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(manifest) if doc}
    assert "CustomResourceDefinition" in kinds and "Deployment" in kinds
    assert done.stdout.count("(server dry run)") == sum(
        1 for doc in yaml.safe_load_all(manifest) if doc
    ), done.stdout


def test_dry_run_rejects_what_the_schemas_reject(
    control_plane, namespace, service_monitor_crd, tmp_path: Path
) -> None:
    """The validation above is not vacuous: a wrong field in a rendered object fails it."""
    docs = [d for d in yaml.safe_load_all(render(control_plane, {}, namespace, tmp_path)) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = 1
    done = dry_run(control_plane, yaml.safe_dump(deployment), tmp_path)
    assert done.returncode != 0 and 'unknown field "spec.template.spec.containers[0]' in (
        done.stderr
    ), done.stderr
    monitor = next(
        d
        for d in yaml.safe_load_all(
            render(control_plane, {"serviceMonitor": {"enabled": True}}, namespace, tmp_path)
        )
        if d and d["kind"] == "ServiceMonitor"
    )
    monitor["spec"]["endpoints"][0]["interval"] = "every minute"
    done = dry_run(control_plane, yaml.safe_dump(monitor), tmp_path)
    assert done.returncode != 0 and "spec.endpoints[0].interval" in done.stderr, done.stderr


def rule_set(rules: list[Any]) -> set[tuple[tuple[str, ...], ...]]:
    return {
        (tuple(r.api_groups), tuple(r.resources), tuple(r.verbs)) for r in rules
    }  # fmt: skip


def test_helm_install_all_namespaces_and_uninstall(
    control_plane, api_client, namespace, tmp_path: Path
) -> None:
    release = f"all-{uuid.uuid4().hex[:6]}"
    done = helm(
        control_plane, "install", release, str(CHART), "--namespace", namespace,
        "--wait", "--timeout", "2m", values={}, tmp=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "It watches all namespaces." in done.stdout  # NOTES.txt
    rbac = client.RbacAuthorizationV1Api(api_client)
    fullname = f"{release}-maap"
    role = rbac.read_cluster_role(fullname)
    assert rule_set(role.rules) == {(tuple(g), tuple(r), tuple(v)) for g, r, v in RULES}
    deployment = client.AppsV1Api(api_client).read_namespaced_deployment(fullname, namespace)
    assert deployment.status.available_replicas == deployment.spec.replicas == 2  # HA default
    done = helm(control_plane, "uninstall", release, "--namespace", namespace, "--wait",
                tmp=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    with pytest.raises(ApiException) as gone:
        rbac.read_cluster_role(fullname)
    assert gone.value.status == 404


# The interpreter the operator runs with. Pointed at a virtualenv holding only
# operator/requirements.txt and `pip install --no-deps .` (what operator/Dockerfile
# installs), this test checks the operator image's package set without Docker.
OPERATOR_PYTHON = os.environ.get("MAAP_OPERATOR_PYTHON", sys.executable)


class ChartOperator(MaapProcess):
    """`maap operator` with the args and env of the chart's Deployment, as its ServiceAccount."""

    def __init__(self, container: client.V1Container, kubeconfig: Path, log: Path) -> None:
        assert container.command == ["maap"]
        super().__init__(kubeconfig, log)
        self.args = list(container.args)
        self.env = {e.name: e.value for e in container.env if e.value is not None}

    def start(self) -> None:
        self.spawn(OPERATOR_PYTHON, self.args, self.env)


def token_kubeconfig(control_plane, core, sa: str, namespace: str, path: Path) -> Path:
    token = core.create_namespaced_service_account_token(
        sa, namespace, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    admin = yaml.safe_load(Path(control_plane.kubeconfig).read_text())
    cluster = admin["clusters"][0]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "clusters": [cluster],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "op", "context": {"cluster": cluster["name"], "user": sa}}],
        "current-context": "op",
    }))  # fmt: skip
    return path


def test_installed_chart_runs_the_operator_in_its_watched_namespace_only(
    control_plane, api_client, namespace, watched, tmp_path: Path
) -> None:
    """Install with watchNamespaces=[one]; the operator, with only what the chart granted,
    takes a FineTuneJob there to Serving and leaves one in another namespace alone."""
    jobs_ns, other_ns = watched
    core = client.CoreV1Api(api_client)
    release = f"ns-{uuid.uuid4().hex[:6]}"
    ports = {"liveness": free_port(), "metrics": free_port(), "progress": free_port()}
    values = {
        "watchNamespaces": [jobs_ns],
        "ports": ports,
        "waitCheckSeconds": 1,
        "trainer": {"image": {"repository": "registry.test/maap-trainer", "tag": "t1"}},
    }
    done = helm(
        control_plane, "install", release, str(CHART), "--namespace", namespace,
        "--wait", "--timeout", "2m", values=values, tmp=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"It watches the namespaces {jobs_ns}." in done.stdout
    fullname = f"{release}-maap"
    rbac = client.RbacAuthorizationV1Api(api_client)
    split = rules_by_scope()
    namespaced = {(tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"]))
                  for r in split["namespaced"]}  # fmt: skip
    assert rule_set(rbac.read_namespaced_role(fullname, jobs_ns).rules) == namespaced
    # The cluster-wide peering rule stays out: a namespaced operator peers per namespace.
    assert len(rbac.read_cluster_role(fullname).rules) == len(split["cluster"]) - 1
    with pytest.raises(ApiException):
        rbac.read_namespaced_role(fullname, other_ns)

    deployment = client.AppsV1Api(api_client).read_namespaced_deployment(fullname, namespace)
    [container] = deployment.spec.template.spec.containers
    kubeconfig = token_kubeconfig(
        control_plane, core, deployment.spec.template.spec.service_account_name, namespace,
        tmp_path / "operator.kubeconfig",
    )  # fmt: skip
    op = ChartOperator(container, kubeconfig, tmp_path / "operator.log")
    op.start()
    try:
        suffix = uuid.uuid4().hex[:6]
        watched_jobs = Cluster(api_client, jobs_ns, op)  # type: ignore[arg-type]
        unwatched = Cluster(api_client, other_ns, op)  # type: ignore[arg-type]
        watched_jobs.create(finetunejob("chart-job", f"sc-chart-{suffix}"))
        unwatched.create(finetunejob("ignored", f"sc-ignored-{suffix}"))
        watched_jobs.wait_phase("chart-job", "Serving", timeout=120)

        # The pods the operator creates get the chart's trainer image and progress URL.
        train = watched_jobs.batch.read_namespaced_job("chart-job-train", jobs_ns)
        [trainer] = train.spec.template.spec.containers
        assert trainer.image == "registry.test/maap-trainer:t1"
        env = {e.name: e.value for e in trainer.env}
        assert env["MAAP_PROGRESS_URL"] == (
            f"http://{fullname}.{namespace}.svc:{ports['progress']}/v1/progress/{jobs_ns}/chart-job"
        )
        # ... and that endpoint, served on the chart's progress port, takes the job's token.
        secret = core.read_namespaced_secret("chart-job-progress", jobs_ns)
        sent = httpx.post(
            f"http://127.0.0.1:{ports['progress']}/v1/progress/{jobs_ns}/chart-job",
            json={"stage": "training", "step": 1, "totalSteps": 4},
            headers={"Authorization": f"Bearer {base64.b64decode(secret.data['token']).decode()}"},
        )
        assert sent.status_code == 204, sent.text
        assert watched_jobs.status("chart-job")["progress"]["percent"] == 25
        health = httpx.get(f"http://127.0.0.1:{ports['liveness']}/healthz", timeout=5)
        assert health.status_code == 200
        assert (
            "maap_finetunejobs"
            in httpx.get(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5).text
        )

        assert not unwatched.status("ignored"), "the operator touched an unwatched namespace"
        assert not unwatched.batch.list_namespaced_job(other_ns).items
        log = op.log_path.read_text(errors="replace")
        # An RBAC denial reads: User "system:serviceaccount:NS:NAME" cannot VERB ...; kopf
        # degrades quietly (a warning) when it may not list namespaces or CRDs.
        denied = re.findall(r'User \\?"system:serviceaccount:[^"\\]+\\?" cannot [^.]*', log)
        assert not denied, denied
        assert "Not enough permissions" not in log, op.log()
    finally:
        op.stop()
        helm(control_plane, "uninstall", release, "--namespace", namespace, tmp=tmp_path)
