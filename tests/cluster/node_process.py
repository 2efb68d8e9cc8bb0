"""What the real node needs from this host (missing_prerequisites), and its host processes
(containerd, kubelet, kube-proxy, CoreDNS): started in their own process groups with logs
under the node's workdir, killed if the test process dies (PR_SET_PDEATHSIG), and waited
on with the log tail of any that exits early."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import node_images
from controlplane import _Process, _tail, exited, spawn_logged

NODE_BINARIES = ("kubelet", "kube-proxy", "containerd", "ctr", "containerd-shim-runc-v2", "coredns")
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
HOST_TOOLS = ("runc", "iptables", "ip6tables", "iptables-save", "conntrack", "ip", "mount")


def missing_prerequisites(bin_dir: Path) -> list[str]:
    """Why a real node cannot start here (empty when it can)."""
    out = []
    if os.geteuid() != 0:
        out.append("not root")
    bins = [b for b in NODE_BINARIES if not os.access(bin_dir / b, os.X_OK)]
    if bins:
        out.append(f"binaries missing in {bin_dir}: {', '.join(bins)} (run tests/cluster/build.sh)")
    tools = [t for t in HOST_TOOLS if not shutil.which(t, path="/usr/sbin:/usr/bin:/sbin:/bin")]
    if tools:
        out.append(f"host tools missing: {', '.join(tools)} (Debian: runc iptables conntrack)")
    plugins = [p for p in CNI_PLUGINS if not (CNI_BIN_DIR / p).exists()]
    if plugins:
        out.append(f"CNI plugins missing in {CNI_BIN_DIR}: {', '.join(plugins)}")
    if not node_images.BUSYBOX.exists():
        out.append(f"{node_images.BUSYBOX} missing (Debian: busybox-static)")
    if "overlay" not in Path("/proc/filesystems").read_text():
        out.append("no overlayfs")
    return out


class RealNodeError(RuntimeError):
    pass


class Processes:
    def __init__(
        self, bin_dir: Path, workdir: Path, logs_dir: Path, say: Callable[[str], None]
    ) -> None:
        self.bin_dir = bin_dir
        self.workdir = workdir
        self.logs_dir = logs_dir
        self.say = say
        self.procs: list[_Process] = []

    def spawn(self, name: str, args: Sequence[str | Path]) -> _Process:
        # The bin dir first: containerd finds its shim (containerd-shim-runc-v2) on PATH.
        env = {**os.environ, "PATH": f"{self.bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"}
        proc = spawn_logged(self.bin_dir / name, args, self.logs_dir, self.workdir, env)
        self.procs.append(proc)
        return proc

    def alive(self, name: str) -> bool:
        return any(p.name == name and p.popen.poll() is None for p in self.procs)

    def terminate(self, name: str, grace: float = 10.0) -> None:
        """SIGTERM the named process's group, SIGKILL after `grace` seconds."""
        for proc in self.procs:
            if proc.name != name:
                continue
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=grace)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)

    def close_logs(self) -> None:
        for proc in self.procs:
            proc.logfile.close()

    def wait(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        """Poll check() until it returns something truthy; fail at once, with its log
        tail, if one of the processes exits meanwhile."""
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if died := exited(self.procs, what):
                raise RealNodeError(died)
            try:
                value = check()
                if value:
                    self.say(what)
                    return value
            except (OSError, ValueError, KeyError) as e:
                last = e
            time.sleep(0.2)
        logs = "".join(f"\nlast lines of {p.log}:\n{_tail(p.log, 15)}" for p in self.procs)
        raise RealNodeError(f"timed out waiting for {what} (last error: {last!r}){logs}")


def http_ok(port: int, path: str) -> Callable[[], bool]:
    """A check for Processes.wait: GET http://127.0.0.1:port/path answers 200."""

    def check() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return bool(r.status == 200)

    return check
