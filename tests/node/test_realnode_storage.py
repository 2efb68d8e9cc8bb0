"""The default StorageClass on the real node: claims bind through the hostPath provisioner,
a uid-1000 pod writes, a second pod reads, and deleting the claim removes the volume."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from controlplane import ControlPlane
from node import RealNode
from realnode_helpers import RESTRICTED, apply, get, kubectl, run_pod


@pytest.mark.parametrize("mode", ["ReadWriteOnce", "ReadWriteMany"])
def test_claim_binds_and_keeps_data_between_pods(
    real_cluster: ControlPlane, real_node: RealNode, namespace: str, mode: str
) -> None:
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        # No storageClassName: the default class (maap-hostpath) is filled in.
        "spec": {"accessModes": [mode], "resources": {"requests": {"storage": "20Gi"}}},
    }
    apply(real_cluster, namespace, claim)
    volume = {
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        "securityContext": RESTRICTED,
    }
    mount = [{"name": "data", "mountPath": "/data"}]

    out = run_pod(
        real_cluster,
        namespace,
        "writer",
        "id -u > /data/who && echo payload > /data/file && ls -ln /data",
        mounts=mount,
        **volume,
    )
    assert "payload" not in out
    assert run_pod(
        real_cluster, namespace, "reader", "cat /data/who /data/file", mounts=mount, **volume
    ).split() == ["1000", "payload"]

    pvc = get(real_cluster, namespace, "pvc", "data")
    assert pvc["status"]["phase"] == "Bound"
    assert pvc["spec"]["storageClassName"] == real_node.storage_class
    pv = get(real_cluster, namespace, "pv", pvc["spec"]["volumeName"])
    path = Path(pv["spec"]["hostPath"]["path"])
    assert (path / "file").read_text() == "payload\n"
    assert pv["spec"]["capacity"]["storage"] == "20Gi"
    assert pv["spec"]["accessModes"] == [mode]

    for name in ("writer", "reader"):
        kubectl(real_cluster, "-n", namespace, "delete", "pod", name, "--wait=true")
    res = kubectl(real_cluster, "-n", namespace, "delete", "pvc", "data", "--wait=true")
    assert res.returncode == 0, res.stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        gone = kubectl(real_cluster, "get", "pv", pv["metadata"]["name"]).returncode != 0
        if gone and not path.exists():
            return
        time.sleep(0.5)
    raise AssertionError(f"PV {pv['metadata']['name']} or {path} still there")
