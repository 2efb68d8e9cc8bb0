"""Pods really run on the real node: logs, exec, Pod Security "restricted", the API from
inside a pod, garbage collection of a Job's pods, and kwok's fake nodes beside it."""

from __future__ import annotations

import json
import subprocess
import time

from controlplane import ControlPlane, wait_for
from node import RealNode
from realnode_helpers import (
    RESTRICTED,
    RESTRICTED_CONTAINER,
    apply,
    container,
    get,
    kubectl,
    logs,
    pod,
    pod_spec,
    run_pod,
    wait_pod,
)


def test_the_node_is_a_real_kubelet_that_kwok_leaves_alone(
    real_cluster: ControlPlane, real_node: RealNode
) -> None:
    node = json.loads(kubectl(real_cluster, "get", "node", real_node.name, "-o", "json").stdout)
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == real_cluster.version
    assert info["containerRuntimeVersion"].startswith("containerd://2.")
    assert "kwok.x-k8s.io/node" not in node["metadata"].get("annotations", {})
    assert node["metadata"]["labels"]["maap.dev/node"] == "real"
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == real_node.address
    # The kubelet (not kwok) renews the node's Lease; it creates it a few seconds after
    # registering the node.
    lease = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{real_node.name}"
    holder = wait_for(
        "the real node's Lease",
        lambda: (real_cluster.request("GET", lease)[1].get("spec") or {}).get("holderIdentity"),
        timeout=60,
    )
    assert holder == real_node.name
    # The fake nodes are still there, Ready, and tainted so that only tolerating pods go.
    fake = json.loads(kubectl(real_cluster, "get", "nodes", "-l", "type=kwok", "-o", "json").stdout)
    assert {n["metadata"]["name"] for n in fake["items"]} == {"maap-cpu-0", "maap-gpu-0"}
    for n in fake["items"]:
        assert any(t["key"] == "kwok.x-k8s.io/node" for t in n["spec"]["taints"])


def test_pod_runs_exits_zero_and_logs(real_cluster: ControlPlane, namespace: str) -> None:
    script = "echo hello-from-the-real-node; id -u; ulimit -n; cat /etc/resolv.conf"
    out = run_pod(real_cluster, namespace, "hello", script)
    lines = out.splitlines()
    assert lines[0] == "hello-from-the-real-node"
    assert lines[1] == "0"
    assert int(lines[2]) <= 20000  # the host's hard RLIMIT_NOFILE: never raised
    assert "nameserver 10.96.0.10" in out
    assert f"search {namespace}.svc.cluster.local svc.cluster.local cluster.local" in out
    p = get(real_cluster, namespace, "pod", "hello")
    assert p["spec"]["nodeName"] == "maap-real-0"
    assert p["status"]["podIP"].startswith("10.244.200.")
    assert p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0


def test_exec_into_a_running_pod(real_cluster: ControlPlane, namespace: str) -> None:
    apply(real_cluster, namespace, pod("sleeper", "echo ready > /tmp/state; exec sleep 3600"))
    wait_pod(real_cluster, namespace, "sleeper", "Running")
    res = kubectl(real_cluster, "-n", namespace, "exec", "sleeper", "--", "cat", "/tmp/state")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ready"


def test_pod_security_restricted(real_cluster: ControlPlane, namespace: str) -> None:
    res = kubectl(
        real_cluster,
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
    )
    assert res.returncode == 0, res.stderr
    compliant = pod(
        "compliant",
        "id -u; echo written > /scratch/f && cat /scratch/f; "
        "touch /rootfs-file 2>/dev/null || echo ro-ok",
        securityContext=RESTRICTED,
    )
    compliant["spec"]["containers"][0].update(
        securityContext=RESTRICTED_CONTAINER,
        volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}],
    )
    compliant["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    apply(real_cluster, namespace, compliant)
    wait_pod(real_cluster, namespace, "compliant")
    assert logs(real_cluster, namespace, "compliant").split() == ["1000", "written", "ro-ok"]

    doc = json.dumps(pod("root-pod", "id"))
    res = kubectl(real_cluster, "-n", namespace, "create", "-f", "-", stdin=doc)
    assert res.returncode != 0
    assert "violates PodSecurity" in res.stderr and "restricted" in res.stderr


def test_pod_reaches_the_api_with_its_service_account(
    real_cluster: ControlPlane, namespace: str
) -> None:
    """In-cluster config: KUBERNETES_SERVICE_HOST:PORT (the `kubernetes` Service) and the
    projected token; a SelfSubjectReview answers who the API thinks the pod is."""
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    review = '{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}'
    script = (
        'URL="https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"; echo "$URL"; '
        f"TOKEN=$(cat {sa}/token); "
        'timeout 20 wget -q --no-check-certificate -O - --header "Authorization: Bearer $TOKEN" '
        f"--header 'Content-Type: application/json' --post-data '{review}' "
        '"$URL/apis/authentication.k8s.io/v1/selfsubjectreviews"'
    )
    out = run_pod(real_cluster, namespace, "in-cluster", script)
    first, _, body = out.partition("\n")
    assert first == "https://10.96.0.1:443"
    user = json.loads(body)["status"]["userInfo"]
    assert user["username"] == f"system:serviceaccount:{namespace}:default"


def test_deleting_a_job_collects_its_pods_on_the_node(
    real_cluster: ControlPlane, real_node: RealNode, namespace: str
) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "long"},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": pod_spec("exec sleep 3600")},
        },
    }
    apply(real_cluster, namespace, job)
    deadline = time.monotonic() + 60
    pods: list[str] = []
    while time.monotonic() < deadline and not pods:
        res = kubectl(
            real_cluster,
            "-n",
            namespace,
            "get",
            "pods",
            "-l",
            "job-name=long",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        )
        pods = res.stdout.split()
        time.sleep(0.5)
    assert len(pods) == 1
    wait_pod(real_cluster, namespace, pods[0], "Running")

    def ctr(*args: str) -> list[str]:
        res = subprocess.run(real_node.ctr_command(*args), capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        return res.stdout.split()

    # The pod's sandbox and container, and their running processes (tasks).
    ours = set(ctr("containers", "ls", "-q", f'labels."io.kubernetes.pod.namespace"=={namespace}'))
    assert len(ours) == 2, ours
    assert ours <= set(ctr("tasks", "ls", "-q"))
    res = kubectl(real_cluster, "-n", namespace, "delete", "job", "long", "--wait=true")
    assert res.returncode == 0, res.stderr
    # The garbage collector deletes the pod, the kubelet kills it and stops its sandbox
    # (the stopped containers stay in containerd until the kubelet's container GC).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pods_left = kubectl(real_cluster, "-n", namespace, "get", "pods", "-o", "name").stdout
        running = ours & set(ctr("tasks", "ls", "-q"))
        if not pods_left.strip() and not running:
            return
        time.sleep(0.5)
    raise AssertionError(f"left after deleting the Job: pods {pods_left!r}, tasks {running}")


def test_kwok_fake_nodes_still_run_pods_that_tolerate_them(
    real_cluster: ControlPlane, namespace: str
) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "fake-gpu"},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {"maap.dev/pool": "gpu"},
                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists"}],
                    "containers": [
                        container("never runs", resources={"limits": {"nvidia.com/gpu": "1"}})
                    ],
                }
            }
        },
    }
    apply(real_cluster, namespace, job)
    res = kubectl(
        real_cluster,
        "-n",
        namespace,
        "wait",
        "--for=condition=Complete",
        "--timeout=60s",
        "job/fake-gpu",
    )
    assert res.returncode == 0, res.stderr
    res = kubectl(
        real_cluster,
        "-n",
        namespace,
        "get",
        "pods",
        "-l",
        "job-name=fake-gpu",
        "-o",
        "jsonpath={.items[0].spec.nodeName}",
    )
    assert res.stdout == "maap-gpu-0"
