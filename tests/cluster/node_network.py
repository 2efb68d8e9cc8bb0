"""Host networking for the real test node (tests/cluster/node.py): one lock per machine, the
node address, routes that keep cluster traffic on this host, sysctls and iptables rules
saved and restored. Standard library; `ip`, `iptables` and `ip6tables` from the host.

Addresses (defaults; one real node per machine, guarded by NodeHost's lock):
- 10.199.0.1/32 on `maapnode0`, a bridge with no ports (this kernel has no `dummy`
  driver; a port-less bridge holds a local address just as well): the API server binds
  it, the kubelet reports it as the node's InternalIP, CoreDNS listens on it.
- 10.96.0.0/16 (Services) and 10.244.0.0/16 (pods; kwok's fake pods get addresses there
  too) are routed into that bridge, where nothing forwards them: a ClusterIP that
  kube-proxy did not translate, or a fake pod's address, goes nowhere instead of out of
  eth0 to the real network.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import node_cleanup as cleanup

NODE_ADDRESS = "10.199.0.1"
NODE_INTERFACE = "maapnode0"
SERVICE_CIDR = "10.96.0.0/16"
CLUSTER_CIDR = "10.244.0.0/16"
POD_BRIDGE = "maapcni0"
LOCK_FILE = Path("/run/lock/maap-realnode.lock")
# What a running real node has put on this host (sysctls as they were, its workdir, socket,
# cgroup root): written while it runs, removed by a clean stop. Found at start, it means
# the last run was killed, and its leftovers are removed first.
STATE_FILE = Path("/run/lock/maap-realnode.json")
# Chain of ours in the filter table: pod traffic may reach the bridge and this host, and
# nothing else (no route out of the machine, no masquerade).
ISOLATION_CHAIN = "MAAP-NODE-ISOLATION"
# Chains components create that `kube-proxy --cleanup` leaves alone (CNI portmap, kubelet).
CHAIN_PREFIXES = ("KUBE-", "CNI-", "MAAP-")
# Sysctls the node's components write (ours, the kubelet's kernel tunables, kube-proxy's
# conntrack settings): saved before start, written back on stop.
SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
)


class NodeNetworkError(RuntimeError):
    pass


def run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise NodeNetworkError(f"{' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def delete_link(name: str) -> None:
    if link_exists(name):
        run("ip", "link", "delete", name, check=False)


class Sysctls:
    """Reads a set of sysctls now; restore() writes back the ones that changed."""

    def __init__(self, names: Iterable[str] = SYSCTLS) -> None:
        self.saved: dict[str, str] = {}
        for name in names:
            with contextlib.suppress(OSError):
                self.saved[name] = Path("/proc/sys", name).read_text().strip()

    @staticmethod
    def write(name: str, value: str) -> None:
        Path("/proc/sys", name).write_text(value + "\n")

    def restore(self) -> list[str]:
        changed = []
        for name, value in self.saved.items():
            path = Path("/proc/sys", name)
            with contextlib.suppress(OSError):
                if path.read_text().strip() != value:
                    path.write_text(value + "\n")
                    changed.append(f"{name}={value}")
        return changed


def _chains(binary: str, table: str) -> set[str]:
    res = run(binary, "-w", "5", "-t", table, "-S", check=False)
    if res.returncode != 0:
        return set()
    return {line.split()[1] for line in res.stdout.splitlines() if line.startswith("-N ")}


TABLES = ("filter", "nat", "mangle", "raw")
BINARIES = ("iptables", "ip6tables")


def chain_snapshot() -> dict[tuple[str, str], set[str]]:
    return {(b, t): _chains(b, t) for b in BINARIES for t in TABLES}


def remove_new_chains(before: dict[tuple[str, str], set[str]]) -> list[str]:
    """Delete chains named KUBE-*/CNI-*/MAAP-* that were not there in `before`, with every
    rule that jumps to them. Returns what it removed ("iptables nat KUBE-SERVICES")."""
    removed = []
    for (binary, table), old in before.items():
        new = {c for c in _chains(binary, table) - old if c.startswith(CHAIN_PREFIXES)}
        if not new:
            continue
        # Drop the jumps into them from any chain, then flush and delete them.
        rules = run(binary, "-w", "5", "-t", table, "-S", check=False).stdout.splitlines()
        for rule in rules:
            parts = rule.split()
            if parts[:1] == ["-A"] and "-j" in parts:
                target = parts[parts.index("-j") + 1]
                if target in new and parts[1] not in new:
                    run(binary, "-w", "5", "-t", table, "-D", *parts[1:], check=False)
        for chain in new:
            run(binary, "-w", "5", "-t", table, "-F", chain, check=False)
        for chain in new:
            run(binary, "-w", "5", "-t", table, "-X", chain, check=False)
            removed.append(f"{binary} {table} {chain}")
    return sorted(removed)


class NodeHost:
    """What the real node needs from this machine before anything starts: the lock (one real
    node per machine: kube-proxy's iptables chains, the bridge names and 10.199.0.1 are
    machine-wide), the node address on its port-less bridge, routes keeping cluster CIDRs
    local, ip_forward, and a FORWARD rule letting pod traffic go only back into the bridge.

    `with NodeHost() as host:` sets it up; leaving removes all of it and restores the
    sysctls it and the node's components changed.
    """

    def __init__(
        self,
        *,
        address: str = NODE_ADDRESS,
        interface: str = NODE_INTERFACE,
        pod_bridge: str = POD_BRIDGE,
        lock_timeout: float = 900.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.address = address
        self.interface = interface
        self.pod_bridge = pod_bridge
        self.lock_timeout = lock_timeout
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._lock_fd: int | None = None
        self._sysctls: Sysctls | None = None
        self._chains: dict[tuple[str, str], set[str]] = {}
        self._routes: list[str] = []

    def __enter__(self) -> NodeHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> NodeHost:
        self._lock()
        try:
            self._clean_stale()
            self._sysctls = Sysctls()
            self._chains = chain_snapshot()
            self.remember(sysctls=self._sysctls.saved)
            run("ip", "link", "add", self.interface, "type", "bridge")
            run("ip", "addr", "add", f"{self.address}/32", "dev", self.interface)
            run("ip", "link", "set", self.interface, "up")
            for cidr in (SERVICE_CIDR, CLUSTER_CIDR):
                run("ip", "route", "replace", cidr, "dev", self.interface)
                self._routes.append(cidr)
            Sysctls.write("net/ipv4/ip_forward", "1")
            # Bridged pod-to-pod replies must pass iptables, or Service DNAT breaks on the
            # bridge (pod -> ClusterIP -> pod on the same node).
            Sysctls.write("net/bridge/bridge-nf-call-iptables", "1")
            self._isolate_pods()
        except BaseException:
            self.stop()
            raise
        return self

    def _remove_isolation(self) -> None:
        chain = ISOLATION_CHAIN
        while run("iptables", "-w", "5", "-D", "FORWARD", "-j", chain, check=False).returncode == 0:
            pass
        run("iptables", "-w", "5", "-F", chain, check=False)
        run("iptables", "-w", "5", "-X", chain, check=False)

    def _isolate_pods(self) -> None:
        chain, br = ISOLATION_CHAIN, self.pod_bridge
        self._remove_isolation()  # a stale one from a killed run
        run("iptables", "-w", "5", "-N", chain)
        # Traffic from the pod bridge that is routed anywhere but back into it is dropped:
        # pods reach each other, Services (DNAT to pods) and this host (INPUT), nothing else.
        run("iptables", "-w", "5", "-A", chain, "-i", br, "-o", br, "-j", "RETURN")
        run("iptables", "-w", "5", "-A", chain, "-i", br, "-j", "DROP")
        run("iptables", "-w", "5", "-I", "FORWARD", "1", "-j", chain)

    def remember(self, **fields: Any) -> None:
        """Record what the node put on the host, for the next start if this one is killed."""
        state = json.loads(STATE_FILE.read_text()) if STATE_FILE.exists() else {}
        state.update(fields, pid=os.getpid())
        STATE_FILE.write_text(json.dumps(state, indent=2) + "\n")

    def _clean_stale(self) -> None:
        """Undo a killed run: its container processes and shims, mounts, cgroups, iptables
        chains, links and sysctls, then its workdir."""
        try:
            state = json.loads(STATE_FILE.read_text())
        except (OSError, ValueError):
            state = {}
        stale_links = [n for n in (self.pod_bridge, self.interface) if link_exists(n)]
        if not state and not stale_links:
            return
        self._log(f"[node] cleaning up after a killed run (pid {state.get('pid')})")
        if state.get("cgroup_root"):
            cleanup.kill_cgroup_processes(state["cgroup_root"])
        if state.get("containerd_address"):
            cleanup.kill_pids(cleanup.processes_with_arg(state["containerd_address"]))
        workdir = Path(state["workdir"]) if state.get("workdir") else None
        if workdir:
            cleanup.unmount_all(workdir)
        if state.get("kube_proxy"):
            run(state["kube_proxy"], "--cleanup", check=False)
        if state.get("cgroup_root"):
            cleanup.remove_cgroups(state["cgroup_root"])
        for name in stale_links:
            delete_link(name)
        self._remove_isolation()
        # Its chains were new then; nothing else on this host makes KUBE-/CNI- chains.
        remove_new_chains({k: set() for k in chain_snapshot()})
        for name, value in state.get("sysctls", {}).items():
            with contextlib.suppress(OSError):
                Sysctls.write(name, value)
        for path in state.get("absent_paths", []):
            shutil.rmtree(path, ignore_errors=True)
        cp_dir = Path(state.get("controlplane_workdir") or "/nonexistent")
        if cp_dir.name.startswith("maap-controlplane-"):
            shutil.rmtree(cp_dir, ignore_errors=True)  # its processes died with the test run
        if workdir and workdir.name.startswith("maap-node-") and not cleanup.mounts_under(workdir):
            cleanup.remove_log_links(workdir)
            shutil.rmtree(workdir, ignore_errors=True)
        STATE_FILE.unlink(missing_ok=True)

    def stop(self) -> None:
        if self._lock_fd is None:
            return
        try:
            delete_link(self.pod_bridge)
            for cidr in self._routes:
                run("ip", "route", "del", cidr, "dev", self.interface, check=False)
            self._routes.clear()
            delete_link(self.interface)
            self._remove_isolation()
            if self._chains:
                removed = remove_new_chains(self._chains)
                if removed:
                    self._log(f"[node] removed leftover iptables chains: {', '.join(removed)}")
            if self._sysctls:
                changed = self._sysctls.restore()
                if changed:
                    self._log(f"[node] restored sysctls: {' '.join(changed)}")
            STATE_FILE.unlink(missing_ok=True)
        finally:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _lock(self) -> None:
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.lock_timeout
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 100, 0).decode(errors="replace").strip()
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise NodeNetworkError(
                        f"another real node holds {LOCK_FILE} ({holder}) for over "
                        f"{self.lock_timeout:.0f}s"
                    ) from None
                if not said:
                    self._log(f"[node] waiting for {LOCK_FILE}, held by {holder}")
                    said = True
                time.sleep(1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        self._lock_fd = fd


def ip_of(interface: str) -> str | None:
    """The first IPv4 address of an interface, or None."""
    res = run("ip", "-4", "-o", "addr", "show", "dev", interface, check=False)
    m = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", res.stdout)
    return m.group(1) if m else None
