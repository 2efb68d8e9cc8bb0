"""The Helm chart (charts/maap): generated parts in sync, `helm lint`, `helm template`.

What the rendered objects must say is checked against the code they configure: the RBAC
rules against operator/maap/rbac.py, the operator's arguments against the `maap operator`
command, its environment against the variables the operator reads. Applying them to a
real API server is tests/controlplane/test_chart_install.py.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from maap.docs import render_reference
from maap.rbac import CLUSTER_SCOPED, RULES, render_chart_rules, rules_by_scope

from tests.conftest import REPO

CHART = REPO / "charts" / "maap"
sys.path.insert(0, str(REPO / "tests" / "cluster"))
from controlplane import default_bin_dir, read_versions  # noqa: E402

# Values the chart is rendered with: defaults, a namespace list, every option switched.
VALUES_MATRIX: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "everything": {
        "watchNamespaces": ["team-a"],
        "image": {"repository": "registry.example/maap-operator", "tag": "1.2.3"},
        "trainer": {
            "image": {
                "repository": "registry.example/maap-trainer-cuda",
                "tag": "1.2.3-cu128",
                "pullPolicy": "Always",
            },
            "serviceAccountName": "maap-workload",
        },
        "serviceAccount": {"create": True, "name": "ops", "annotations": {"a": "b"}},
        "ports": {"liveness": 18080, "metrics": 19090, "progress": 18081},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "imagePullSecrets": [{"name": "regcred"}],
        "waitCheckSeconds": 2.5,
        "verbose": True,
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "podLabels": {"team": "ml"},
        "extraEnv": [{"name": "MAAP_MAX_WORKERS", "value": "8"}],
        "priorityClassName": "system-cluster-critical",
    },
    "no-rbac": {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "mine"}},
    "one-replica": {"operator": {"replicas": 1}},
    "gateway": {
        "watchNamespaces": ["team-a"],
        "gateway": {
            "enabled": True,
            "port": 18443,
            "service": {"type": "LoadBalancer", "annotations": {"a": "b"}},
            "storage": {"size": "50Gi", "storageClassName": "fast", "accessMode": "ReadWriteOnce"},
            "uploadTmpSize": "2Gi",
            "serviceAccount": {"name": "gw", "annotations": {"a": "b"}},
            "extraArgs": ["--webhook-url=https://hooks.example/ft", "--verbose"],
            "extraEnv": [{"name": "EXTRA", "value": "1"}],
            "podLabels": {"team": "ml"},
            "nodeSelector": {"kubernetes.io/os": "linux"},
        },
    },
}

BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "typo": ({"watchNamespace": ["a"]}, "additional properties 'watchNamespace'"),
    "namespace-not-a-list": ({"watchNamespaces": "team-a"}, "want array"),
    "namespace-not-a-name": ({"watchNamespaces": ["Team_A"]}, "does not match pattern"),
    "port-out-of-range": ({"ports": {"liveness": 0, "metrics": 1, "progress": 2}}, "minimum"),
    "pull-policy": ({"image": {"repository": "x", "pullPolicy": "Sometimes"}}, "value must be"),
    "sa-without-name": ({"serviceAccount": {"create": False}}, "serviceAccount.name is required"),
    "no-replicas": ({"operator": {"replicas": 0}}, "minimum"),
    "replicas-typo": ({"operator": {"replica": 2}}, "additional properties 'replica'"),
    "gateway-typo": ({"gateway": {"enable": True}}, "additional properties 'enable'"),
    "gateway-arg-not-a-flag": ({"gateway": {"extraArgs": ["verbose"]}}, "does not match pattern"),
    "gateway-sa-without-name": (
        {"gateway": {"enabled": True, "serviceAccount": {"create": False}}},
        "gateway.serviceAccount.name is required",
    ),
}


def helm_binary() -> str:
    found = default_bin_dir() / "helm"
    if found.is_file():
        return str(found)
    if on_path := shutil.which("helm"):
        return on_path
    reason = f"helm not found in {default_bin_dir()} or on PATH: run tests/cluster/build.sh"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: helm is required)", pytrace=False)
    pytest.skip(reason)


def kube_version() -> str:
    # helm built from source defaults to Kubernetes v1.20 for `template`; render for the
    # version the control plane tests run.
    return read_versions()["KUBERNETES_VERSION"]


def helm(*args: str, values: dict[str, Any] | None = None, tmp: Path | None = None):
    cmd = [helm_binary(), *args]
    if values:
        assert tmp is not None
        path = tmp / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        cmd += ["--values", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def render(values: dict[str, Any], tmp: Path, namespace: str = "maap-system") -> list[dict]:
    done = helm(
        "template", "rel", str(CHART), "--namespace", namespace, "--kube-version", kube_version(),
        values=values, tmp=tmp,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def component(obj: dict) -> str | None:
    return (obj["metadata"].get("labels") or {}).get("app.kubernetes.io/component")


def one(objects: list[dict], kind: str, namespace: str | None = None, of: str = "operator") -> dict:
    """The one object of that kind (and namespace) of the operator, or (`of`) the gateway."""
    found = [
        o for o in objects
        if o["kind"] == kind and (namespace is None or o["metadata"].get("namespace") == namespace)
        and component(o) in (of, None)
    ]  # fmt: skip
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def rule_set(rules: list[dict]) -> set[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]:
    return {(tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"])) for r in rules}


RULE_SET = {(tuple(g), tuple(r), tuple(v)) for g, r, v in RULES}


# --- generated files -------------------------------------------------------------------


def test_chart_crds_are_identical_to_crds_dir() -> None:
    ours = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert ours, "crds/ is empty"
    assert chart == ours, "charts/maap/crds/ differs from crds/: run `make crd`"


def test_chart_rbac_rules_file_matches_rbac_py() -> None:
    assert (CHART / "files" / "rbac-rules.yaml").read_text() == render_chart_rules(), (
        "charts/maap/files/rbac-rules.yaml drifted from operator/maap/rbac.py: run `make generate`"
    )


def test_field_reference_matches_the_models() -> None:
    assert (REPO / "docs" / "finetunejob-reference.md").read_text() == render_reference(), (
        "docs/finetunejob-reference.md drifted from the API models: run `make generate`"
    )


def test_reference_names_every_spec_field() -> None:
    from maap.crd import openapi_schema

    text = render_reference()

    def paths(node: dict[str, Any], prefix: str) -> list[str]:
        out = []
        for name, sub in node.get("properties", {}).items():
            out.append(f"{prefix}.{name}")
            out += paths(sub, f"{prefix}.{name}")
        return out

    for path in paths(openapi_schema()["properties"]["spec"], "spec"):
        assert f"| `{path}` |" in text or f"\n## {path}\n" in text, path
    assert "*immutable*" in text and "**required**" in text


def test_rules_split_by_scope_cover_rules_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    split = rules_by_scope()
    assert rule_set(split["namespaced"]) | rule_set(split["cluster"]) == RULE_SET
    assert all(set(r["resources"]) <= CLUSTER_SCOPED for r in split["cluster"])
    assert not any(set(r["resources"]) & CLUSTER_SCOPED for r in split["namespaced"])
    monkeypatch.setattr("maap.rbac.RULES", [([""], ["pods", "namespaces"], ["list"])])
    with pytest.raises(ValueError, match="mixes namespaced and cluster-scoped"):
        rules_by_scope()


# --- helm lint and template ------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(VALUES_MATRIX))
def test_helm_lint_strict(case: str, tmp_path: Path) -> None:
    done = helm("lint", "--strict", str(CHART), values=VALUES_MATRIX[case], tmp=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_helm_rejects_bad_values(case: str, tmp_path: Path) -> None:
    values, message = BAD_VALUES[case]
    done = helm(
        "template", "rel", str(CHART), "--kube-version", kube_version(), values=values, tmp=tmp_path
    )
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def test_all_namespaces_get_one_cluster_role_with_exactly_the_rules(tmp_path: Path) -> None:
    objects = render({}, tmp_path)
    role = one(objects, "ClusterRole")
    assert rule_set(role["rules"]) == RULE_SET
    assert len(role["rules"]) == len(RULES)
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rel-maap", "namespace": "maap-system"}
    ]
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]
    assert "--namespace" not in " ".join(container(objects)["args"])


def test_namespace_list_gets_a_role_per_namespace(tmp_path: Path) -> None:
    objects = render({"watchNamespaces": ["team-a", "team-b"]}, tmp_path)
    split = rules_by_scope()
    # Namespaced, the operator peers through a KopfPeering in each namespace (in the Role).
    discovery = [r for r in split["cluster"] if "clusterkopfpeerings" not in r["resources"]]
    assert len(discovery) == len(split["cluster"]) - 1
    assert rule_set(one(objects, "ClusterRole")["rules"]) == rule_set(discovery)
    for ns in ("team-a", "team-b"):
        role = one(objects, "Role", ns)
        assert rule_set(role["rules"]) == rule_set(split["namespaced"])
        binding = one(objects, "RoleBinding", ns)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
            "name": role["metadata"]["name"],
        }  # fmt: skip
        assert binding["subjects"][0]["namespace"] == "maap-system"
    args = container(objects)["args"]
    assert [a for a in args if a.startswith("--namespace")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]


def test_no_rbac_uses_the_named_service_account(tmp_path: Path) -> None:
    objects = render(VALUES_MATRIX["no-rbac"], tmp_path)
    kinds = {o["kind"] for o in objects}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    assert "ServiceAccount" not in kinds
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mine"


def container(objects: list[dict]) -> dict[str, Any]:
    [c] = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in c["env"]}


@pytest.mark.parametrize("case", sorted(VALUES_MATRIX))
def test_operator_pod_is_locked_down(case: str, tmp_path: Path) -> None:
    objects = render(VALUES_MATRIX[case], tmp_path)
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    c = container(objects)
    assert deployment["spec"]["replicas"] == VALUES_MATRIX[case].get("operator", {}).get(
        "replicas", 2
    )
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    [mount] = c["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    assert {"name": mount["name"], "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert set(ports) == {"liveness", "metrics", "progress"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}


def operator_command() -> Any:
    from maap.cli import app

    return typer.main.get_command(app).commands["operator"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("case", sorted(VALUES_MATRIX))
def test_rendered_arguments_are_what_maap_operator_accepts(case: str, tmp_path: Path) -> None:
    values = VALUES_MATRIX[case]
    objects = render(values, tmp_path)
    c = container(objects)
    assert c["command"] == ["maap"] and c["args"][0] == "operator"
    # Parse exactly as the CLI would; a renamed or misspelled flag fails here.
    ctx = operator_command().make_context("operator", list(c["args"][1:]))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ctx.params["liveness_port"] == ports["liveness"]
    assert ctx.params["metrics_port"] == ports["metrics"]
    assert list(ctx.params["namespace"] or []) == values.get("watchNamespaces", [])
    assert ctx.params["verbose"] is bool(values.get("verbose"))


def operator_env_names() -> set[str]:
    """MAAP_* variables the operator reads: its command's options, and any the code reads."""
    source = "".join(p.read_text() for p in (REPO / "operator" / "maap").glob("*.py"))
    read = set(re.findall(r"""environ(?:\.get|\.setdefault)?\(\s*["'](MAAP_[A-Z_]+)""", source))
    return read | {p.envvar for p in operator_command().params if isinstance(p.envvar, str)}


@pytest.mark.parametrize("case", sorted(VALUES_MATRIX))
def test_environment_wires_images_and_progress_service(case: str, tmp_path: Path) -> None:
    values = VALUES_MATRIX[case]
    objects = render(values, tmp_path, namespace="ops")
    env = env_of(container(objects))
    extra = {e["name"] for e in values.get("extraEnv", [])}
    unknown = {n for n in env if n.startswith("MAAP_")} - operator_env_names() - extra
    assert not unknown, f"the operator reads no such variable: {unknown}"
    trainer = values.get("trainer", {}).get("image", {})
    expected = f"{trainer.get('repository', 'maap-trainer')}:{trainer.get('tag') or '0.1.0'}"
    assert env["MAAP_TRAINER_IMAGE"] == expected
    assert env["MAAP_IMAGE_PULL_POLICY"] == trainer.get("pullPolicy", "IfNotPresent")
    assert env.get("MAAP_WORKLOAD_SERVICE_ACCOUNT") == (
        values.get("trainer", {}).get("serviceAccountName") or None
    )
    operator_image = values.get("image", {})
    assert container(objects)["image"] == (
        f"{operator_image.get('repository', 'maap-operator')}:{operator_image.get('tag', '0.1.0')}"
    )
    # Pods reach the progress endpoint through the Service: its name, namespace and port.
    service = one(objects, "Service")
    progress = next(p for p in service["spec"]["ports"] if p["name"] == "progress")
    assert env["MAAP_PROGRESS_URL"] == (
        f"http://{service['metadata']['name']}.ops.svc:{progress['port']}"
    )
    assert env["MAAP_PROGRESS_PORT"] == str(progress["port"])
    selector = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= selector.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"metrics", "progress"}


@pytest.mark.parametrize("enabled", [False, True])
def test_service_monitor_is_optional_and_scrapes_the_metrics_port(
    enabled: bool, tmp_path: Path
) -> None:
    objects = render({"serviceMonitor": {"enabled": enabled, "labels": {"release": "p"}}}, tmp_path)
    monitors = [o for o in objects if o["kind"] == "ServiceMonitor"]
    if not enabled:
        assert not monitors
        return
    [monitor] = monitors
    service = one(objects, "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "p"
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


def test_cli_prints_the_generated_files() -> None:
    """`make generate` writes these through the CLI; it must print exactly what is checked."""
    from maap.cli import app
    from typer.testing import CliRunner

    runner = CliRunner()
    rules = runner.invoke(app, ["rbac", "--chart-rules"])
    assert rules.exit_code == 0 and rules.stdout == render_chart_rules()
    docs = runner.invoke(app, ["docs"])
    assert docs.exit_code == 0 and docs.stdout == render_reference()


# --- high availability: replicas, peering, disruption budget --------------------------


def test_replicas_peer_through_the_object_maap_peering_names(tmp_path: Path) -> None:
    for values, kind, namespaces in (
        ({}, "ClusterKopfPeering", [None]),
        ({"watchNamespaces": ["team-a", "team-b"]}, "KopfPeering", ["team-a", "team-b"]),
    ):
        objects = render(values, tmp_path)
        env = container(objects)["env"]
        name = env_of(container(objects))["MAAP_PEERING"]
        peerings = [o for o in objects if o["apiVersion"] == "kopf.dev/v1"]
        assert [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
                for o in peerings] == [(kind, ns, name) for ns in namespaces]  # fmt: skip
        # kopf names each replica after POD_ID in the peering status: the pod's name.
        pod_id = next(e for e in env if e["name"] == "POD_ID")
        assert pod_id["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        # The peering CRDs ship in crds/ (helm installs them before the objects).
        crds = yaml.safe_load_all((CHART / "crds" / "kopfpeerings.kopf.dev.yaml").read_text())
        assert kind in {c["spec"]["names"]["kind"] for c in crds}
    ctx = operator_command().make_context("operator", ["--peering", "x"])
    assert ctx.params["peering"] == "x" and ctx.params["priority"] is None


def test_peering_rules_are_granted_where_the_mode_needs_them(tmp_path: Path) -> None:
    verbs = ("get", "list", "watch", "patch")
    plurals = ("kopfpeerings", "clusterkopfpeerings")
    peering = {(("kopf.dev",), (plural,), verbs) for plural in plurals}
    assert peering <= RULE_SET
    everywhere = rule_set(one(render({}, tmp_path), "ClusterRole")["rules"])
    assert peering <= everywhere
    objects = render({"watchNamespaces": ["team-a"]}, tmp_path)
    cluster = {r[1] for r in rule_set(one(objects, "ClusterRole")["rules"])}
    namespaced = {r[1] for r in rule_set(one(objects, "Role", "team-a")["rules"])}
    assert ("kopfpeerings",) in namespaced and ("clusterkopfpeerings",) not in cluster


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_replicas_roll_without_a_gap_and_keep_one_through_disruptions(
    replicas: int, tmp_path: Path
) -> None:
    objects = render({"operator": {"replicas": replicas}}, tmp_path)
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == replicas
    # A new pod starts (paused: the old one is older) before an old one goes.
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }  # fmt: skip
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    if replicas == 1:
        assert not budgets, "a budget of 1 out of 1 would block every node drain"
    else:
        [budget] = budgets
        assert budget["spec"]["minAvailable"] == 1
        assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    [term] = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= pod_labels.items()


def test_own_affinity_replaces_the_default_spreading(tmp_path: Path) -> None:
    mine = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "pool", "operator": "In", "values": ["ops"]}]}]}}}  # fmt: skip
    objects = render({"affinity": mine}, tmp_path)
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["affinity"] == mine


def test_the_model_cache_is_opt_in_and_wires_the_operators_flags(tmp_path: Path) -> None:
    assert not any(k.startswith("MAAP_MODEL_CACHE") for k in env_of(container(
        render({}, tmp_path, namespace="ops"))))  # fmt: skip
    values = {"modelCache": {"enabled": True, "claimName": "models", "size": "500Gi",
                             "storageClassName": "cephfs"}}  # fmt: skip
    env = env_of(container(render(values, tmp_path, namespace="ops")))
    assert env["MAAP_MODEL_CACHE_CLAIM"] == "models"
    assert env["MAAP_MODEL_CACHE_SIZE"] == "500Gi"
    assert env["MAAP_MODEL_CACHE_STORAGE_CLASS"] == "cephfs"
    assert env["MAAP_MODEL_CACHE_ACCESS_MODE"] == "ReadWriteMany"
    assert {k for k in env if k.startswith("MAAP_MODEL_CACHE")} <= operator_env_names()


# --- the optional gateway --------------------------------------------------------------


def gateway_command() -> Any:
    from maap.cli import app

    return typer.main.get_command(app).commands["gateway"]  # type: ignore[attr-defined]


def gateway_objects(values: dict[str, Any], tmp: Path, namespace: str = "ops") -> list[dict]:
    return [o for o in render(values, tmp, namespace) if component(o) == "gateway"]


def test_gateway_is_off_by_default(tmp_path: Path) -> None:
    assert not gateway_objects({}, tmp_path)
    assert not gateway_objects({"gateway": {"enabled": False, "port": 9000}}, tmp_path)


@pytest.mark.parametrize("values", [{"gateway": {"enabled": True}}, VALUES_MATRIX["gateway"]])
def test_gateway_pod_is_locked_down_and_wired_to_its_service_secret_and_claim(
    values: dict[str, Any], tmp_path: Path
) -> None:
    objects = render(values, tmp_path, namespace="ops")
    gateway = values["gateway"]
    deployment = one(objects, "Deployment", of="gateway")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # one pod owns the volume
    pod = deployment["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert c["image"] == container(objects)["image"]  # the operator's image

    # The arguments parse as `maap gateway` parses them, and name what the chart made.
    assert c["command"] == ["maap"] and c["args"][0] == "gateway"
    params = gateway_command().make_context("gateway", list(c["args"][1:])).params
    service = one(objects, "Service", of="gateway")
    [port] = service["spec"]["ports"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert params["local"] is False and params["host"] == "0.0.0.0"
    assert params["port"] == ports[port["targetPort"]] == port["port"] == gateway.get("port", 8080)
    assert params["internal_url"] == f"http://{service['metadata']['name']}.ops.svc:{port['port']}"
    assert params["namespace"] == "ops"
    if "--verbose" in gateway.get("extraArgs", []):
        assert params["verbose"] is True and params["webhook_url"] == "https://hooks.example/ft"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["type"] == gateway.get("service", {}).get("type", "ClusterIP")
    # Neither Service selects the other's pods.
    operator_pods = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= operator_pods.items()
    assert not one(objects, "Service")["spec"]["selector"].items() <= labels.items()

    # The signing secret comes from the chart's Secret, under the variable the flag names.
    env = {e["name"]: e for e in c["env"]}
    ref = env[params["file_secret_env"]]["valueFrom"]["secretKeyRef"]
    secret = one(objects, "Secret", of="gateway")
    assert ref["name"] == secret["metadata"]["name"]
    assert len(base64.b64decode(secret["data"][ref["key"]])) >= 32
    extra = {e["name"] for e in gateway.get("extraEnv", [])}
    assert set(env) - extra == {params["file_secret_env"], "PYTHONDONTWRITEBYTECODE",
                                "PYTHONUNBUFFERED", "HOME"}  # fmt: skip

    # Files on the claim at the state dir; uploads spool on a bounded /tmp.
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = one(objects, "PersistentVolumeClaim", of="gateway")
    assert volumes[mounts[str(params["state_dir"])]]["persistentVolumeClaim"] == {
        "claimName": claim["metadata"]["name"]
    }
    assert volumes[mounts["/tmp"]]["emptyDir"] == {"sizeLimit": gateway.get("uploadTmpSize", "1Gi")}
    storage = gateway.get("storage", {})
    assert claim["spec"]["resources"]["requests"]["storage"] == storage.get("size", "10Gi")
    assert claim["spec"].get("storageClassName") == storage.get("storageClassName")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for probe in (c["livenessProbe"], c["readinessProbe"]):
        assert probe["httpGet"] == {"path": "/healthz", "port": "http"}


@pytest.mark.parametrize("values", [{"gateway": {"enabled": True}}, VALUES_MATRIX["gateway"]])
def test_gateway_rbac_is_exactly_the_gateway_rules(values: dict[str, Any], tmp_path: Path) -> None:
    from maap.rbac import GATEWAY_OWN_NAMESPACE_RULES, GATEWAY_RULES

    objects = render(values, tmp_path, namespace="ops")
    sa = one(objects, "ServiceAccount", of="gateway")
    pod = one(objects, "Deployment", of="gateway")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    expected = values["gateway"].get("serviceAccount", {}).get("name") or "rel-maap-gateway"
    assert sa["metadata"]["name"] == expected
    role = one(objects, "ClusterRole", of="gateway")
    assert rule_set(role["rules"]) == {(tuple(g), tuple(r), tuple(v)) for g, r, v in GATEWAY_RULES}
    own = one(objects, "Role", "ops", of="gateway")
    assert rule_set(own["rules"]) == {
        (tuple(g), tuple(r), tuple(v)) for g, r, v in GATEWAY_OWN_NAMESPACE_RULES
    }
    subject = [{"kind": "ServiceAccount", "name": expected, "namespace": "ops"}]
    for kind, role_kind, bound in (("ClusterRoleBinding", "ClusterRole", role),
                                   ("RoleBinding", "Role", own)):  # fmt: skip
        binding = one(objects, kind, of="gateway")
        assert binding["roleRef"]["kind"] == role_kind
        assert binding["roleRef"]["name"] == bound["metadata"]["name"]
        assert binding["subjects"] == subject
    # The operator's own rules are untouched by the gateway.
    assert rule_set(one(objects, "ClusterRole")["rules"]) != rule_set(role["rules"])


def test_gateway_options_its_own_claim_and_no_rbac(tmp_path: Path) -> None:
    values = {
        "rbac": {"create": False},
        "gateway": {"enabled": True, "storage": {"existingClaim": "my-files"},
                    "serviceAccount": {"create": False, "name": "mine"}},
    }  # fmt: skip
    objects = gateway_objects(values, tmp_path)
    kinds = {o["kind"] for o in objects}
    assert kinds == {"Deployment", "Service", "Secret"}
    pod = one(objects, "Deployment", of="gateway")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "mine"
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v]  # fmt: skip
    assert claims == ["my-files"]
