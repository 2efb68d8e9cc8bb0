"""Tiny container images for the real node, made without a registry or a builder.

One layer holds Debian's static busybox (package `busybox-static`, /bin/busybox) with a
link per applet in /bin, an /etc/passwd with root and `maap` (uid/gid 1000), and /tmp.
Two images share it, written as one OCI image-layout archive:

- `maap-busybox:test` (docker.io/library/maap-busybox:test once containerd normalises
  the name): shell, wget, nc, nslookup, httpd, ...; Cmd ["sh"].
- `maap-pause:test`: the pod sandbox image (containerd's `pinned_images.sandbox`;
  nothing may pull registry.k8s.io/pause). Its process only sleeps: containerd stops
  sandboxes with SIGKILL, and without shareProcessNamespace it reaps nothing.

`import_archive(archive, ctr, address)` loads an archive into containerd's `k8s.io`
namespace, where the kubelet's images live.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")
BUSYBOX_IMAGE = "docker.io/library/maap-busybox:test"
PAUSE_IMAGE = "docker.io/library/maap-pause:test"
_EPOCH = 1_700_000_000  # fixed mtimes: the same inputs give the same digests

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "maap:x:1000:1000:maap:/home/maap:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\nmaap:x:1000:\nnobody:x:65534:\n"


def _applets(busybox: Path) -> list[str]:
    out = subprocess.run([str(busybox), "--list"], check=True, capture_output=True, text=True)
    return sorted({a for a in out.stdout.split() if a and "/" not in a and a != "busybox"})


def _layer(busybox: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, *, kind: bytes = tarfile.DIRTYPE, mode: int = 0o755, data: bytes = b"",
                link: str = "", uid: int = 0) -> None:  # fmt: skip
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = kind, mode, _EPOCH
            info.uid = info.gid = uid
            if kind == tarfile.SYMTYPE:
                info.linkname = link
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)

        for d in ("bin", "etc", "proc", "sys", "dev", "root", "home", "var", "usr", "usr/bin"):
            add(d, mode=0o700 if d == "root" else 0o755)
        add("home/maap", uid=1000)
        add("tmp", mode=0o1777)
        add("bin/busybox", kind=tarfile.REGTYPE, data=busybox.read_bytes())
        for applet in _applets(busybox):
            add(f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox")
        add("usr/bin/env", kind=tarfile.SYMTYPE, link="/bin/busybox")
        add("etc/passwd", kind=tarfile.REGTYPE, mode=0o644, data=PASSWD.encode())
        add("etc/group", kind=tarfile.REGTYPE, mode=0o644, data=GROUP.encode())
        add("etc/nsswitch.conf", kind=tarfile.REGTYPE, mode=0o644, data=b"hosts: files dns\n")
    return buf.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_archive(path: Path, busybox: Path = BUSYBOX) -> list[str]:
    """Write the OCI archive with both images to `path`; returns their names."""
    layer = _layer(busybox)
    blobs: dict[str, bytes] = {_digest(layer): layer}
    platform = {"architecture": "amd64", "os": "linux"}
    manifests = []
    for name, config in (
        (BUSYBOX_IMAGE, {"Env": ["PATH=/bin:/usr/bin"], "Cmd": ["sh"], "WorkingDir": "/"}),
        (PAUSE_IMAGE, {"Env": ["PATH=/bin"], "Entrypoint": ["/bin/sleep", "2147483647"]}),
    ):
        cfg: dict[str, Any] = {
            **platform,
            "created": "2023-11-14T22:13:20Z",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
            "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "node_images.py"}],
        }
        cfg_bytes = json.dumps(cfg, sort_keys=True).encode()
        blobs[_digest(cfg_bytes)] = cfg_bytes
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {
                "mediaType": MT_CONFIG,
                "digest": _digest(cfg_bytes),
                "size": len(cfg_bytes),
            },
            "layers": [{"mediaType": MT_LAYER, "digest": _digest(layer), "size": len(layer)}],
        }
        m_bytes = json.dumps(manifest, sort_keys=True).encode()
        blobs[_digest(m_bytes)] = m_bytes
        manifests.append(
            {
                "mediaType": MT_MANIFEST,
                "digest": _digest(m_bytes),
                "size": len(m_bytes),
                "platform": platform,
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                },
            }
        )
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": manifests}  # fmt: skip
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index, sort_keys=True).encode(),
        **{f"blobs/sha256/{d.split(':', 1)[1]}": b for d, b in blobs.items()},
    }
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), _EPOCH, 0o644
            tar.addfile(info, io.BytesIO(data))
    return [BUSYBOX_IMAGE, PAUSE_IMAGE]


def import_archive(archive: Path, ctr: Path, address: str, *, timeout: float = 600) -> str:
    """`ctr -n k8s.io images import` of a docker or OCI archive, unpacked for overlayfs
    (the snapshotter the CRI uses), its layer blobs then left to containerd's garbage
    collector (half the disk for a big image); returns ctr's output."""
    res = subprocess.run(
        [str(ctr), "--address", address, "--namespace", "k8s.io", "images", "import",
         "--local", "--discard-unpacked-layers", "--snapshotter", "overlayfs",
         "--platform", "linux/amd64", str(archive)],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if res.returncode != 0:
        raise RuntimeError(f"ctr images import {archive} failed: {res.stderr.strip()}")
    return res.stdout


def load_test_images(ctr_command: list[str], directory: Path) -> list[str]:
    """Write the archive into `directory`, import it with `ctr_command` (ctr with the node's
    --address and -n k8s.io), and check both images are there; returns their names."""
    directory.mkdir(parents=True, exist_ok=True)
    archive = directory / "maap-test-images.tar"
    names = write_archive(archive)
    ctr, address = Path(ctr_command[0]), ctr_command[ctr_command.index("--address") + 1]
    import_archive(archive, ctr, address)
    res = subprocess.run([*ctr_command, "images", "ls", "-q"], capture_output=True, text=True)
    missing = set(names) - set(res.stdout.split())
    if missing:
        raise RuntimeError(f"images not in containerd after import: {sorted(missing)}")
    return names
