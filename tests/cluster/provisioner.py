"""A dynamic hostPath provisioner for the real test node, run as a thread in the test process.

The StorageClass `maap-hostpath` (the cluster default) names provisioner
`maap.dev/hostpath`, binding mode WaitForFirstConsumer, reclaim policy Delete. The flow is
the one external provisioners follow (rancher's local-path-provisioner works the same):

1. the PV controller in kube-controller-manager annotates a claim of this class with
   `volume.kubernetes.io/storage-provisioner: maap.dev/hostpath`, and once a pod using it
   is scheduled, the scheduler adds `volume.kubernetes.io/selected-node`;
2. we create a directory under `root` (mode 0777: pods run as uid 1000 and hostPath
   ignores fsGroup) and a PersistentVolume (hostPath, node affinity to the selected node,
   claimRef to the claim, the claim's size and access modes);
3. the PV controller binds the two;
4. when the claim is deleted, the PV becomes Released; we remove the directory and the PV.

kube-controller-manager's own `--enable-hostpath-provisioner` does not do here: it makes
`/tmp/hostpath_pv/<uuid>` (outside our workdir) with mode 0750 owned by root, so a uid-1000
pod cannot write, and its PVs carry no node affinity (a pod could land on a kwok node).
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROVISIONER = "maap.dev/hostpath"
STORAGE_CLASS = "maap-hostpath"
SELECTED_NODE = "volume.kubernetes.io/selected-node"
PROVISIONER_ANNOTATIONS = (
    "volume.kubernetes.io/storage-provisioner",
    "volume.beta.kubernetes.io/storage-provisioner",
)

# (method, path, body) -> (HTTP status, JSON body): ControlPlane.request.
Request = Callable[[str, str, Any], tuple[int, Any]]


def storage_class(default: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {
                "storageclass.kubernetes.io/is-default-class": "true" if default else "false"
            },
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    }


class HostPathProvisioner:
    """start() creates the StorageClass and polls claims and volumes every `interval` s;
    stop() ends the thread (PVs it made stay until their claims go, or the cluster does)."""

    def __init__(
        self,
        request: Request,
        root: Path,
        *,
        interval: float = 0.5,
        log: Callable[[str], None] = print,
    ) -> None:
        self._request = request
        self.root = Path(root)
        self.interval = interval
        self._log = log
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []  # the last few failures, for debugging tests
        self.provisioned: dict[str, Path] = {}  # PV name -> directory

    def start(self) -> HostPathProvisioner:
        self.root.mkdir(parents=True, exist_ok=True)
        status, body = self._request(
            "POST", "/apis/storage.k8s.io/v1/storageclasses", storage_class()
        )
        if status not in (201, 409):
            raise RuntimeError(f"creating StorageClass {STORAGE_CLASS}: HTTP {status}: {body}")
        self._thread = threading.Thread(target=self._loop, name="hostpath-provisioner", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as e:  # keep serving: a test fails on the unbound claim instead
                self.errors = [*self.errors[-9:], repr(e)]
            self._stop.wait(self.interval)

    def sync(self) -> None:
        """One pass: provision for waiting claims, delete released volumes."""
        status, claims = self._request("GET", "/api/v1/persistentvolumeclaims", None)
        if status != 200:
            raise RuntimeError(f"listing claims: HTTP {status}")
        status, volumes = self._request("GET", "/api/v1/persistentvolumes", None)
        if status != 200:
            raise RuntimeError(f"listing volumes: HTTP {status}")
        ours = [
            v
            for v in volumes["items"]
            if v["metadata"].get("annotations", {}).get("pv.kubernetes.io/provisioned-by")
            == PROVISIONER
        ]
        claimed = {v["spec"].get("claimRef", {}).get("uid") for v in ours}
        for claim in claims["items"]:
            if self._wants_volume(claim) and claim["metadata"]["uid"] not in claimed:
                self._provision(claim)
        for volume in ours:
            if volume.get("status", {}).get("phase") == "Released":
                self._delete(volume)

    @staticmethod
    def _wants_volume(claim: dict[str, Any]) -> bool:
        meta, spec = claim["metadata"], claim["spec"]
        notes = meta.get("annotations", {})
        return (
            claim.get("status", {}).get("phase") == "Pending"
            and not spec.get("volumeName")
            and "deletionTimestamp" not in meta
            and spec.get("storageClassName") == STORAGE_CLASS
            and any(notes.get(a) == PROVISIONER for a in PROVISIONER_ANNOTATIONS)
            and bool(notes.get(SELECTED_NODE))
        )

    def _provision(self, claim: dict[str, Any]) -> None:
        meta, spec = claim["metadata"], claim["spec"]
        node = meta["annotations"][SELECTED_NODE]
        name = f"pvc-{meta['uid']}"
        path = self.root / f"{meta['namespace']}-{meta['name']}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True)
        path.chmod(0o777)  # mkdir's mode is masked by the umask
        volume = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": name,
                "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
                "labels": {"maap.dev/provisioner": "hostpath"},
            },
            "spec": {
                "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": STORAGE_CLASS,
                "volumeMode": spec.get("volumeMode", "Filesystem"),
                "hostPath": {"path": str(path), "type": "Directory"},
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": meta["namespace"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/hostname",
                                        "operator": "In",
                                        "values": [node],
                                    }
                                ]
                            }
                        ]
                    }
                },
            },
        }
        status, body = self._request("POST", "/api/v1/persistentvolumes", volume)
        if status == 201:
            self.provisioned[name] = path
            self._log(f"[provisioner] {name} for {meta['namespace']}/{meta['name']} at {path}")
            return
        shutil.rmtree(path, ignore_errors=True)
        if status != 409:  # 409: made in an earlier pass whose list we raced
            raise RuntimeError(f"creating PV {name}: HTTP {status}: {body}")

    def _delete(self, volume: dict[str, Any]) -> None:
        name = volume["metadata"]["name"]
        path = Path(volume["spec"].get("hostPath", {}).get("path", ""))
        if path.is_relative_to(self.root) and path != self.root:
            shutil.rmtree(path, ignore_errors=True)
        status, body = self._request("DELETE", f"/api/v1/persistentvolumes/{name}", None)
        if status not in (200, 202, 404):
            raise RuntimeError(f"deleting PV {name}: HTTP {status}: {body}")
        with contextlib.suppress(KeyError):
            del self.provisioned[name]
        self._log(f"[provisioner] deleted {name} and {path}")
