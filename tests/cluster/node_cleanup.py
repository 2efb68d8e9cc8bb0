"""Tearing down what a real node leaves on the host after its processes stop: container
processes in its cgroups, containerd shims (detached from containerd, so killing its
process group misses them), mounts under its workdir (container rootfs overlays, pod
volumes, network namespaces, the kubelet's rshared bind mount of its root dir), its cgroup
directories, and the kubelet's log symlinks in /var/log/containers.

Everything here is found from the node's own paths (workdir, containerd socket, cgroup
root), never by process name.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controlplane import ControlPlane

CGROUP_V1 = Path("/sys/fs/cgroup")
MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal.
    return (
        field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
        .replace("\\134", "\\")
    )  # fmt: skip


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root`, deepest (latest) first."""
    prefix = str(root.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = _unescape(line.split()[4])
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return list(reversed(found))


def unmount_all(root: Path, *, attempts: int = 5) -> list[str]:
    """Unmount everything under root (lazily where a plain umount is refused); returns
    what is still mounted afterwards (nothing, normally)."""
    for _ in range(attempts):
        points = mounts_under(root)
        if not points:
            return []
        for point in points:
            path = point.encode()
            if _libc.umount2(path, 0) != 0:
                _libc.umount2(path, MNT_DETACH)
    return mounts_under(root)


def _pids_in(directory: Path) -> set[int]:
    pids: set[int] = set()
    for procs in directory.rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids |= {int(p) for p in procs.read_text().split()}
    return pids


def cgroup_dirs(cgroup_root: str) -> list[Path]:
    """The cgroup root's directory in every mounted v1 hierarchy (and the v2 one)."""
    rel = cgroup_root.strip("/")
    if not rel:
        return []
    return [h / rel for h in sorted(CGROUP_V1.iterdir()) if h.is_dir() and (h / rel).is_dir()]


def kill_cgroup_processes(cgroup_root: str, *, timeout: float = 10.0) -> int:
    """SIGKILL every process in the cgroup subtree (the pods' containers); returns how many."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids: set[int] = set()
        for d in cgroup_dirs(cgroup_root):
            pids |= _pids_in(d)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed |= pids
        time.sleep(0.2)
    return len(killed)


def remove_cgroups(cgroup_root: str) -> list[Path]:
    """rmdir the subtree bottom-up in every hierarchy; returns the dirs that stayed."""
    left = []
    for top in cgroup_dirs(cgroup_root):
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for d in [*dirs, top]:
            for _ in range(20):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)  # EBUSY while the last tasks exit
            else:
                left.append(d)
    return left


def processes_with_arg(needle: str) -> list[int]:
    """Pids whose command line contains `needle` as one argument (e.g. our socket path)."""
    pids = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        with contextlib.suppress(OSError):
            args = (entry / "cmdline").read_bytes().split(b"\0")
            if needle.encode() in args:
                pids.append(int(entry.name))
    return pids


def kill_pids(pids: list[int], *, grace: float = 3.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remove_log_links(target_root: Path, directory: Path = Path("/var/log/containers")) -> int:
    """The kubelet links each container's log into /var/log/containers (a fixed path):
    remove the links that point into `target_root`."""
    removed = 0
    if not directory.is_dir():
        return 0
    prefix = str(target_root.resolve()) + "/"
    for link in directory.iterdir():
        with contextlib.suppress(OSError):
            if link.is_symlink() and os.readlink(link).startswith(prefix):
                link.unlink()
                removed += 1
    return removed


def make_cgroup_root(cgroup_root: str) -> None:
    """The kubelet requires its cgroup root to exist in every hierarchy."""
    rel = cgroup_root.strip("/")
    for h in sorted(CGROUP_V1.iterdir()):
        if not (h / "cgroup.procs").exists():
            continue
        (h / rel).mkdir(exist_ok=True)
        for f in ("cpuset.cpus", "cpuset.mems"):  # empty in a new v1 cpuset cgroup
            if (h / f).exists() and not (h / rel / f).read_text().strip():
                (h / rel / f).write_text((h / f).read_text())


class HostPaths:
    """Fixed host paths the components write to whatever their config says (the CNI result
    cache /var/lib/cni, shim sockets in /run/containerd/s, /var/log/containers): listed
    now; restore() removes them if they were absent, else only the entries added since."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self.before = {p: set(os.listdir(p)) if p.is_dir() else None for p in paths}

    def restore(self) -> None:
        for path, before in self.before.items():
            if not path.is_dir():
                continue
            if before is None:
                shutil.rmtree(path, ignore_errors=True)
                continue
            for entry in set(os.listdir(path)) - before:
                target = path / entry
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)


def drain(cp: ControlPlane, node: str, list_tasks: Sequence[str], timeout: float = 60) -> None:
    """Cordon the node, delete its pods, and wait until the kubelet has torn them down: no
    pods bound to it and no containerd tasks (`list_tasks`: a `ctr tasks ls -q` command),
    so sandboxes are stopped and their CNI networks deleted."""
    cp.kubectl("cordon", node, check=False)
    cp.kubectl(
        "delete", "pods", "--all-namespaces", "--grace-period=1", "--wait=false",
        f"--field-selector=spec.nodeName={node}", check=False,
    )  # fmt: skip

    def no_pods() -> bool:
        status, body = cp.request("GET", f"/api/v1/pods?fieldSelector=spec.nodeName%3D{node}")
        return status == 200 and not body["items"]

    def no_tasks() -> bool:
        res = subprocess.run(list(list_tasks), capture_output=True, text=True, timeout=10)
        return res.returncode == 0 and not res.stdout.split()

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (no_pods() and no_tasks()):
        time.sleep(0.5)
