#!/usr/bin/env python3
"""A real kubelet node joined to the test control plane (tests/cluster/controlplane.py).

containerd (CRI, runc shim, overlayfs, CNI bridge), kubelet, kube-proxy (iptables) and
CoreDNS run as host processes beside the control plane, all state under one workdir; a
hostPath provisioner thread serves the default StorageClass. See tests/cluster/README.md,
"The real node". Needs root, the binaries of tests/cluster/build.sh and Debian's runc,
containernetworking-plugins, iptables, conntrack and busybox-static.

    with real_cluster() as (cp, node):   # NodeHost + ControlPlane + RealNode
        cp.kubectl("run", ...); node.import_image(archive)

By hand: `python tests/cluster/node.py up` prints KUBECONFIG and runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import json
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from maap_trainer.ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent))
import node_cleanup as cleanup
import node_images
import node_services as svc
from controlplane import DEFAULT_NODES, ControlPlane, default_bin_dir
from node_network import POD_BRIDGE, NodeHost, run
from node_process import CNI_BIN_DIR, Processes, RealNodeError, http_ok, missing_prerequisites
from provisioner import STORAGE_CLASS, HostPathProvisioner

NODE_NAME = "maap-real-0"
POD_CIDR = "10.244.200.0/24"  # kwok hands its fake pods addresses from 10.244.0.0 upwards
NODE_LABELS = {"maap.dev/pool": "cpu", "maap.dev/node": "real"}
# kwok's convention: fake nodes carry this taint, so that only pods that say so land there.
KWOK_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
# Paths the components use whatever their config says; what they add there is removed.
HOST_PATHS = (Path("/var/log/containers"), Path("/var/lib/cni"), Path("/run/containerd"))


class RealNode:
    """One kubelet node on this host, registered with `control_plane`, which must run with
    advertise_address (see real_cluster()). start()/stop() or a with-block.

    Attributes: name, address (the node's InternalIP, = the API server's address),
    kubeconfig (the admin's), containerd_address (socket path), ctr (ctr binary), workdir,
    logs_dir, cgroup_root, storage_class, startup_seconds. Images: import_image(archive),
    or `ctr --address <containerd_address> -n k8s.io images import ...`; pods then use them
    with imagePullPolicy IfNotPresent/Never (`maap-busybox:test` is there from the start).
    """

    def __init__(
        self,
        control_plane: ControlPlane,
        *,
        name: str = NODE_NAME,
        labels: dict[str, str] | None = None,
        taints: Sequence[dict[str, str]] = (),
        pod_cidr: str = POD_CIDR,
        bridge: str = POD_BRIDGE,
        host: NodeHost | None = None,
        workdir: Path | None = None,
        keep_workdir: bool = False,
        timeout: float = 180.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if not control_plane.advertise_address:
            raise RealNodeError("the control plane needs advertise_address (see real_cluster())")
        self.cp = control_plane
        self.bin_dir = control_plane.bin_dir
        self.name = name
        self.address = control_plane.advertise_address
        self.kubeconfig = control_plane.kubeconfig
        self.labels = dict(NODE_LABELS if labels is None else labels)
        self.taints = [dict(t) for t in taints]
        self.pod_cidr = pod_cidr
        self.bridge = bridge
        self.host = host
        self.timeout = timeout
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="maap-node-"))
        self.keep_workdir = keep_workdir
        self.logs_dir = self.workdir / "logs"
        self.containerd_address = str(self.workdir / "containerd" / "containerd.sock")
        self.ctr = self.bin_dir / "ctr"
        self.cgroup_root = f"/{name}"
        self.storage_class = STORAGE_CLASS
        self.startup_seconds: float | None = None
        self.provisioner: HostPathProvisioner | None = None
        self._procs = Processes(self.bin_dir, self.workdir, self.logs_dir, self._say)
        self._host_paths: cleanup.HostPaths | None = None
        self._ports: dict[str, int] = {}
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._t0 = time.monotonic()
        self._started = False
        self._stopped = False

    def __enter__(self) -> RealNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- public helpers -------------------------------------------------------------

    def ctr_command(self, *args: str) -> list[str]:
        return [str(self.ctr), "--address", self.containerd_address, "-n", "k8s.io", *args]

    def import_image(self, archive: Path) -> str:
        """Load a docker/OCI archive into the node's containerd (k8s.io namespace)."""
        return node_images.import_archive(archive, self.ctr, self.containerd_address)

    def images(self) -> list[str]:
        res = subprocess.run(self.ctr_command("images", "ls", "-q"), capture_output=True, text=True)
        return res.stdout.split()

    # ---- lifecycle ------------------------------------------------------------------

    def start(self) -> RealNode:
        problems = missing_prerequisites(self.bin_dir)
        if problems:
            raise RealNodeError("cannot start a real node: " + "; ".join(problems))
        self._t0 = time.monotonic()
        self._started = True
        atexit.register(self.stop)
        try:
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            self._host_paths = cleanup.HostPaths(HOST_PATHS)
            if self.host:
                self.host.remember(
                    workdir=str(self.workdir),
                    containerd_address=self.containerd_address,
                    cgroup_root=self.cgroup_root,
                    kube_proxy=str(self.bin_dir / "kube-proxy"),
                    absent_paths=[str(p) for p, v in self._host_paths.before.items() if v is None],
                )
            self._start_containerd()
            names = node_images.load_test_images(self.ctr_command(), self.workdir / "images")
            self._say(f"images imported: {', '.join(names)}")
            self._create_objects()
            self._start_coredns()
            self._start_kube_proxy()
            self._start_kubelet()
            self._wait_ready()
        except BaseException:
            self._say(f"start failed; logs in {self.logs_dir}")
            self.keep_workdir = True
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - self._t0
        self._say(f"node {self.name} Ready in {self.startup_seconds:.1f}s")
        return self

    def stop(self) -> None:
        """Drain the node, stop its processes, and remove everything it left on the host."""
        if self._stopped or not self._started:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        t0 = self._t0 = time.monotonic()
        if self.provisioner:
            self.provisioner.stop()
        if self._procs.alive("kubelet") and self._procs.alive("containerd"):
            with contextlib.suppress(Exception):
                cleanup.drain(self.cp, self.name, self.ctr_command("tasks", "ls", "-q"))
        for name in ("kubelet", "kube-proxy", "coredns"):
            self._procs.terminate(name)
        with contextlib.suppress(Exception):
            self.cp.request("DELETE", f"/api/v1/nodes/{self.name}")
        killed = cleanup.kill_cgroup_processes(self.cgroup_root)
        self._procs.terminate("containerd")
        shims = cleanup.processes_with_arg(self.containerd_address)
        cleanup.kill_pids(shims)
        still = cleanup.unmount_all(self.workdir)
        run(str(self.bin_dir / "kube-proxy"), "--cleanup", check=False)
        cgroups_left = cleanup.remove_cgroups(self.cgroup_root)
        cleanup.remove_log_links(self.workdir)
        if self._host_paths:
            self._host_paths.restore()
        self._procs.close_logs()
        notes = [f"{killed} container processes killed"] if killed else []
        notes += [f"{len(shims)} shims killed"] if shims else []
        notes += [f"still mounted: {still}"] if still else []
        notes += [f"cgroups left: {cgroups_left}"] if cgroups_left else []
        self._say(f"stopped in {time.monotonic() - t0:.1f}s" + "".join(f"; {n}" for n in notes))
        if self._own_workdir and not self.keep_workdir and not still:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            self._say(f"kept {self.workdir}")

    # ---- components -----------------------------------------------------------------

    def _say(self, msg: str) -> None:
        self._log(f"[node +{time.monotonic() - self._t0:5.1f}s] {msg}")

    def _wait(self, what: str, check: Callable[[], Any], timeout: float | None = None) -> Any:
        return self._procs.wait(what, check, timeout or self.timeout)

    def _start_containerd(self) -> None:
        d = self.workdir / "containerd"
        cni_dir = self.workdir / "cni" / "net.d"
        cni_dir.mkdir(parents=True)
        gateway = self.pod_cidr.rsplit(".", 1)[0] + ".1"
        conf = svc.cni_config(
            bridge=self.bridge,
            pod_cidr=self.pod_cidr,
            gateway=gateway,
            ipam_dir=self.workdir / "cni" / "ipam",
        )
        (cni_dir / "10-maap.conflist").write_text(json.dumps(conf, indent=2))
        config = d / "config.toml"
        d.mkdir(parents=True, exist_ok=True)
        runc = shutil.which("runc", path="/usr/sbin:/usr/bin:/sbin:/bin")
        config.write_text(
            svc.containerd_config(
                d,
                socket=Path(self.containerd_address),
                cni_conf_dir=cni_dir,
                cni_bin_dir=CNI_BIN_DIR,
                runc=Path(runc or "/usr/sbin/runc"),
            )
        )
        self._procs.spawn("containerd", ["--config", config, "--log-level", "info"])

        def up() -> bool:
            res = subprocess.run(self.ctr_command("version"), capture_output=True, timeout=10)
            return res.returncode == 0

        self._wait("containerd serving", up, timeout=60)

    def _create(self, path: str, obj: dict[str, Any]) -> None:
        status, body = self.cp.request("POST", path, obj)
        if status not in (201, 409):
            raise RealNodeError(
                f"creating {obj['kind']} {obj['metadata']['name']}: {status} {body}"
            )

    def _create_objects(self) -> None:
        for path, obj in [*svc.coredns_rbac(), *svc.kube_dns_objects(self.address, self.name)]:
            self._create(path, obj)
        storage = self.workdir / "volumes"
        self.provisioner = HostPathProvisioner(self.cp.request, storage, log=self._log).start()
        self._say(f"kube-dns Service, CoreDNS RBAC, StorageClass {STORAGE_CLASS} created")

    def _start_coredns(self) -> None:
        kc = self.cp.write_kubeconfig(
            self.workdir / "coredns.kubeconfig", f"/CN={svc.COREDNS_USER}", "coredns"
        )
        self._ports["coredns-health"] = free_port()
        self._ports["coredns-ready"] = free_port()
        corefile = self.workdir / "Corefile"
        corefile.write_text(
            svc.corefile(
                address=self.address,
                kubeconfig=kc,
                health_port=self._ports["coredns-health"],
                ready_port=self._ports["coredns-ready"],
            )
        )
        self._procs.spawn("coredns", ["-conf", corefile])

    def _start_kube_proxy(self) -> None:
        kc = self.cp.write_kubeconfig(
            self.workdir / "kube-proxy.kubeconfig", "/CN=system:kube-proxy", "kube-proxy"
        )
        self._ports["kube-proxy-healthz"] = free_port()
        config = self.workdir / "kube-proxy.json"
        conf = svc.kube_proxy_config(
            kubeconfig=kc,
            node_name=self.name,
            address=self.address,
            healthz_port=self._ports["kube-proxy-healthz"],
            metrics_port=free_port(),
        )
        config.write_text(json.dumps(conf, indent=2))
        self._procs.spawn("kube-proxy", [f"--config={config}", "--v=1"])

    def _start_kubelet(self) -> None:
        pki = self.cp.pki
        assert pki is not None
        kc = self.cp.write_kubeconfig(
            self.workdir / "kubelet.kubeconfig",
            f"/O=system:nodes/CN=system:node:{self.name}",
            f"kubelet-{self.name}",
        )
        tls_crt, tls_key = pki.issue(
            f"kubelet-serving-{self.name}",
            f"/CN={self.name}",
            server_sans=[f"IP:{self.address}", f"DNS:{self.name}"],
        )
        cleanup.make_cgroup_root(self.cgroup_root)
        resolv = self.workdir / "resolv.conf"
        resolv.write_text("")
        self._ports["kubelet"] = free_port()
        self._ports["kubelet-healthz"] = free_port()
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        conf = svc.kubelet_config(
            workdir=self.workdir,
            address=self.address,
            port=self._ports["kubelet"],
            healthz_port=self._ports["kubelet-healthz"],
            runtime_socket=Path(self.containerd_address),
            ca=pki.ca_crt,
            tls_crt=tls_crt,
            tls_key=tls_key,
            cgroup_root=self.cgroup_root,
            resolv_conf=resolv,
            max_open_files=min(hard, 1_000_000) if hard != resource.RLIM_INFINITY else 1_000_000,
        )
        if self.taints:
            conf["registerWithTaints"] = self.taints
        config = self.workdir / "kubelet.json"
        config.write_text(json.dumps(conf, indent=2))
        labels = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        self._procs.spawn(
            "kubelet",
            [
                f"--config={config}",
                f"--kubeconfig={kc}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.address}",
                f"--node-labels={labels}",
                f"--root-dir={self.workdir / 'kubelet'}",
                f"--cert-dir={self.workdir / 'kubelet-pki'}",
            ],
        )

    def _wait_ready(self) -> None:
        def node() -> dict[str, Any] | None:
            status, body = self.cp.request("GET", f"/api/v1/nodes/{self.name}")
            return body if status == 200 else None

        self._wait("kubelet registered the node", node)

        def ready() -> bool:
            n = node() or {}
            conds = {c["type"]: c for c in n.get("status", {}).get("conditions", [])}
            ours = {t["key"] for t in self.taints}
            taints = [t for t in n.get("spec", {}).get("taints") or [] if t["key"] not in ours]
            return conds.get("Ready", {}).get("status") == "True" and not taints

        self._wait("node Ready (runtime and CNI ready) with no taints", ready)

        self._wait("kube-proxy healthy", http_ok(self._ports["kube-proxy-healthz"], "/healthz"))
        self._wait("CoreDNS ready", http_ok(self._ports["coredns-ready"], "/ready"))

        def api_endpoint() -> bool:
            path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes"
            status, body = self.cp.request("GET", path)
            addrs = [a for e in body.get("endpoints") or [] for a in e["addresses"]]
            return status == 200 and addrs == [self.address]

        self._wait(f"`kubernetes` Service endpoint {self.address}", api_endpoint)


FAKE_NODES = tuple(dataclasses.replace(n, taints=(KWOK_TAINT,)) for n in DEFAULT_NODES)


@contextlib.contextmanager
def real_cluster(
    *,
    fake_nodes: Sequence[Any] = FAKE_NODES,
    node_name: str = NODE_NAME,
    keep_workdir: bool = False,
    log: Callable[[str], None] | None = None,
    **cp_kwargs: Any,
) -> Iterator[tuple[ControlPlane, RealNode]]:
    """NodeHost (lock, address, routes), a ControlPlane advertising that address with kwok
    fake nodes (tainted, see KWOK_TAINT), and a RealNode; all stopped on exit."""
    with NodeHost(log=log) as host:
        cp = ControlPlane(
            advertise_address=host.address,
            nodes=fake_nodes,
            keep_workdir=keep_workdir,
            log=log,
            **cp_kwargs,
        )
        if not keep_workdir:  # a later start removes it if this run is killed
            host.remember(controlplane_workdir=str(cp.workdir))
        with cp:
            node = RealNode(
                cp,
                name=node_name,
                bridge=host.pod_bridge,
                host=host,
                keep_workdir=keep_workdir,
                log=log,
            )
            with node:
                yield cp, node


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start control plane + real node, wait until Ctrl-C")
    up.add_argument("--keep", action="store_true", help="keep the workdirs (logs) on exit")
    sub.add_parser("cleanup", help="remove what a killed real node left on this host")
    args = parser.parse_args(argv)
    if args.command == "cleanup":
        NodeHost().start().stop()  # start() undoes a killed run it finds recorded
        return 0
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    problems = missing_prerequisites(default_bin_dir())
    if problems:
        print("; ".join(problems), file=sys.stderr)
        return 1
    try:
        with real_cluster(keep_workdir=args.keep) as (cp, node):
            print(f"export KUBECONFIG={cp.kubeconfig}", flush=True)
            print(f"# node {node.name} at {node.address}; ctr: {' '.join(node.ctr_command())}")
            print(f"# logs in {node.logs_dir} and {cp.logs_dir}; Ctrl-C stops", flush=True)
            while True:
                time.sleep(1)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
