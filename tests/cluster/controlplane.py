#!/usr/bin/env python3
"""A real Kubernetes control plane on 127.0.0.1 for tests.

etcd, kube-apiserver (client-cert auth, RBAC), kube-controller-manager, kube-scheduler and
kwok (fake nodes whose pods run through the Stages in ./stages), from the binaries that
tests/cluster/build.sh builds. Standard library, maap's own free-port helper
(maap_trainer.ports) and the `openssl` CLI; the Python `kubernetes` package is imported only
by ControlPlane.api_client().

By hand:
    bash tests/cluster/build.sh
    python tests/cluster/controlplane.py up      # prints KUBECONFIG, runs until Ctrl-C
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from maap_trainer.ports import free_port

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
STAGES_DIR = HERE / "stages"
VERSIONS_FILE = HERE / "versions.env"
BUILD_SCRIPT = HERE / "build.sh"
# Binaries the control plane runs (build.sh also builds helm, which it does not need).
REQUIRED_BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
)
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # first address of SERVICE_CIDR: the `kubernetes` Service
POD_CIDR = "10.244.0.0/16"
# The API server's client identity towards kubelets (advertise_address mode only).
KUBELET_CLIENT_USER = "maap:apiserver-kubelet-client"
T = TypeVar("T")


class ControlPlaneError(RuntimeError):
    """The control plane failed to start; the message carries the failing log's tail."""


@dataclass(frozen=True)
class FakeNode:
    """A Node that kwok keeps Ready; its pods never run, kwok Stages move their status."""

    name: str
    cpu: str = "16"
    memory: str = "64Gi"
    pods: str = "110"
    gpus: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    # e.g. ({"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"},): the
    # real-node cluster taints its fake nodes so that only pods that tolerate it land there.
    taints: tuple[dict[str, str], ...] = ()

    def manifest(self) -> dict[str, Any]:
        capacity = {"cpu": self.cpu, "memory": self.memory, "pods": self.pods}
        if self.gpus:
            capacity["nvidia.com/gpu"] = str(self.gpus)
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
            **self.labels,
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": labels,
                # kwok manages only nodes with this annotation (see _start_kwok).
                "annotations": {KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1]},
            },
            "spec": {"taints": [dict(t) for t in self.taints]} if self.taints else {},
            "status": {"capacity": capacity, "allocatable": dict(capacity)},
        }


CPU_NODE = FakeNode("maap-cpu-0", labels={"maap.dev/pool": "cpu"})
GPU_NODE = FakeNode(
    "maap-gpu-0",
    gpus=2,
    labels={"maap.dev/pool": "gpu", "maap.dev/accelerator": "nvidia"},
)
DEFAULT_NODES: tuple[FakeNode, ...] = (CPU_NODE, GPU_NODE)


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """KEY=VALUE lines of versions.env (the same file build.sh sources)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip().strip("\"'")
    return out


def default_bin_dir() -> Path:
    """The dir build.sh builds into; asked from build.sh so the cache key lives in one place."""
    override = os.environ.get("MAAP_CLUSTER_BIN_DIR")
    if override:
        return Path(override)
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-bin-dir"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def missing_binaries(bin_dir: Path) -> list[str]:
    return [b for b in REQUIRED_BINARIES if not os.access(bin_dir / b, os.X_OK)]


def wait_for(
    what: str, fn: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.25
) -> T:
    """Poll fn() until it returns something truthy, and return that; TimeoutError naming
    `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _die_with_parent() -> None:
    # SIGKILL the child if the launching process dies without cleaning up (kill -9,
    # os._exit from a timeout), so no orphan etcd/apiserver keeps ports and CPU.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    logfile: IO[bytes]


def spawn_logged(
    binary: Path, args: Sequence[str | Path], logs_dir: Path, cwd: Path, env: dict[str, str]
) -> _Process:
    """Start a binary with its output appended to LOGS_DIR/NAME.log, in its own process
    group (stopping it kills its children too), killed if this process dies."""
    log = logs_dir / f"{binary.name}.log"
    logfile = log.open("ab")
    popen = subprocess.Popen(
        [str(binary), *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=logfile,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    return _Process(binary.name, popen, log, logfile)


def exited(procs: Sequence[_Process], what: str) -> str | None:
    """Why waiting for `what` is over: the first process that exited, with its log tail."""
    for p in procs:
        if p.popen.poll() is not None:
            return (
                f"{p.name} exited with {p.popen.returncode} while waiting for {what}; "
                f"last lines of {p.log}:\n{_tail(p.log)}"
            )
    return None


class _Pki:
    """Certificates and keys made with the openssl CLI: a CA, the apiserver's serving cert,
    client certs per identity, and the service-account signing key pair."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cnf = self.dir / "openssl.cnf"
        self.cnf.write_text(
            "[req]\ndistinguished_name = dn\n[dn]\n"
            "[ca]\nbasicConstraints = critical, CA:TRUE\n"
            "keyUsage = critical, keyCertSign, cRLSign, digitalSignature\n"
            "subjectKeyIdentifier = hash\n"
        )
        self.ca_crt = self.dir / "ca.crt"
        self.ca_key = self.dir / "ca.key"
        self._ec_key(self.ca_key)
        self._openssl(
            "req", "-x509", "-new", "-key", self.ca_key, "-out", self.ca_crt, "-days", "3650",
            "-subj", "/CN=maap-test-ca", "-config", self.cnf, "-extensions", "ca",
        )  # fmt: skip
        self.sa_key = self.dir / "sa.key"
        self.sa_pub = self.dir / "sa.pub"
        self._openssl(
            "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
            "-out", self.sa_key,
        )  # fmt: skip
        self._openssl("pkey", "-in", self.sa_key, "-pubout", "-out", self.sa_pub)

    def _openssl(self, *args: str | Path) -> None:
        cmd = ["openssl", *map(str, args)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise ControlPlaneError(f"{' '.join(cmd)} failed:\n{res.stderr}")

    def _ec_key(self, path: Path) -> None:
        self._openssl(
            "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path
        )

    def issue(
        self, name: str, subject: str, *, server_sans: Sequence[str] = ()
    ) -> tuple[Path, Path]:
        """A leaf cert signed by the CA: a serving cert when server_sans is given, else a
        client cert (CN = user, O = group)."""
        key, csr, crt = (self.dir / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        ext = self.dir / f"{name}.ext"
        lines = ["basicConstraints = critical, CA:FALSE"]
        if server_sans:
            lines += [
                "keyUsage = critical, digitalSignature, keyEncipherment",
                "extendedKeyUsage = serverAuth",
                "subjectAltName = " + ", ".join(server_sans),
            ]
        else:
            lines += [
                "keyUsage = critical, digitalSignature, keyEncipherment",
                "extendedKeyUsage = clientAuth",
            ]
        ext.write_text("[leaf]\n" + "\n".join(lines) + "\n")
        self._ec_key(key)
        self._openssl(
            "req", "-new", "-key", key, "-out", csr, "-subj", subject, "-config", self.cnf
        )
        self._openssl(
            "x509", "-req", "-in", csr, "-CA", self.ca_crt, "-CAkey", self.ca_key,
            "-CAcreateserial", "-out", crt, "-days", "3650",
            "-extfile", ext, "-extensions", "leaf",
        )  # fmt: skip
        return crt, key


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok.

    Use as a context manager, or call start()/stop(). stop() kills every process group
    it started and is also registered with atexit.
    """

    def __init__(
        self,
        bin_dir: Path | None = None,
        *,
        workdir: Path | None = None,
        crds_dir: Path | None = REPO_ROOT / "crds",
        nodes: Sequence[FakeNode] = DEFAULT_NODES,
        keep_workdir: bool = False,
        timeout: float = 180.0,
        log: Callable[[str], None] | None = None,
        advertise_address: str | None = None,
        audit_log: Path | None = None,
    ) -> None:
        """audit_log: the API server writes one JSON line per request there (metadata level;
        bench/operator_scale.py attributes requests to clients with it).

        advertise_address: None (default) binds the API server to 127.0.0.1 with no
        endpoints for the `kubernetes` Service (kwok-only clusters: no pod dials it). An
        address of this host that pods reach (tests/cluster/node.py puts 10.199.0.1 on a
        port-less bridge) makes the API server bind and advertise it, keep the Service's
        endpoints with the lease reconciler, and talk to kubelets with a client cert that
        RBAC binds to system:kubelet-api-admin (logs, exec, port-forward); it also enables
        the NodeRestriction admission plugin."""
        self.bin_dir = Path(bin_dir) if bin_dir else default_bin_dir()
        self.advertise_address = advertise_address
        self.audit_log = audit_log
        self.api_host = advertise_address or "127.0.0.1"
        self.crds_dir = crds_dir
        self.nodes = tuple(nodes)
        self.timeout = timeout
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="maap-controlplane-"))
        self.keep_workdir = keep_workdir
        self.kubeconfig = self.workdir / "kubeconfig"
        self.logs_dir = self.workdir / "logs"
        self.server = ""
        self.startup_seconds: float | None = None
        self._procs: list[_Process] = []
        self._t0 = time.monotonic()
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._admin_ssl: ssl.SSLContext | None = None
        self._api_port = 0
        self.pki: _Pki | None = None  # set by start(): the CA that signs every cert
        self._kcm_port = 0
        self._scheduler_port = 0
        self._stopped = False

    # ---- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        missing = missing_binaries(self.bin_dir)
        if missing:
            raise ControlPlaneError(
                f"missing binaries in {self.bin_dir}: {', '.join(missing)}; "
                "run `bash tests/cluster/build.sh`"
            )
        self._t0 = time.monotonic()
        atexit.register(self.stop)
        try:
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            pki = self.pki = _Pki(self.workdir / "pki")
            self._say("certificates ready")
            etcd_url = self._start_etcd()
            self._start_apiserver(pki, etcd_url)
            self._start_controller_manager(pki)
            self._start_scheduler(pki)
            self._start_kwok(pki)
            self._create_nodes()
            self._wait_ready()
            self._apply_crds()
        except BaseException:
            self._say(f"start failed; logs in {self.logs_dir}")
            self.keep_workdir = True  # keep logs and certs to debug
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - self._t0
        self._say(f"ready in {self.startup_seconds:.1f}s; KUBECONFIG={self.kubeconfig}")
        return self

    def stop(self) -> None:
        """Stop in reverse start order (etcd last: the apiserver needs it to shut down
        quickly), SIGTERM then SIGKILL after 5 s per process group; remove the workdir."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        t0 = time.monotonic()
        for proc in reversed(self._procs):
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=5)
            # The group may hold children even after its leader exited.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)
            proc.logfile.close()
        if self._procs:
            self._say(f"stopped {len(self._procs)} processes in {time.monotonic() - t0:.1f}s")
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        elif self._procs:
            self._say(f"kept {self.workdir}")

    # ---- clients -------------------------------------------------------------------

    def api_client(self) -> ApiClient:
        """A new kubernetes.client.ApiClient authenticated as the admin (system:masters)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One HTTPS request to the API server as the admin; returns (status, JSON or text)."""
        assert self._admin_ssl is not None, "control plane not started"
        return _https(self._admin_ssl, self._api_port, method, path, body, host=self.api_host)

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            check=check,
            capture_output=True,
            text=True,
        )

    @property
    def version(self) -> str:
        return str(self.request("GET", "/version")[1]["gitVersion"])

    # ---- components ----------------------------------------------------------------

    def _say(self, msg: str) -> None:
        self._log(f"[controlplane +{time.monotonic() - self._t0:5.1f}s] {msg}")

    def _spawn(
        self, name: str, args: Sequence[str | Path], env: dict[str, str] | None = None
    ) -> _Process:
        proc = spawn_logged(
            self.bin_dir / name, args, self.logs_dir, self.workdir, {**os.environ, **(env or {})}
        )
        self._procs.append(proc)
        return proc

    def _wait(self, what: str, check: Callable[[], bool], *, proc: _Process | None = None) -> None:
        """Poll check() until it is true; fail fast with the log tail if a process died."""
        deadline = time.monotonic() + self.timeout
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            if died := exited(self._procs, what):
                raise ControlPlaneError(died)
            try:
                if check():
                    self._say(f"{what}: ok")
                    return
            except (OSError, http.client.HTTPException, ssl.SSLError, ValueError) as e:
                last_error = e
            time.sleep(0.2)
        # Without a known culprit, show a bit of every log.
        shown = [proc] if proc else self._procs
        log = "".join(
            f"\nlast lines of {p.log}:\n{_tail(p.log, 40 if proc else 10)}" for p in shown
        )
        raise ControlPlaneError(
            f"timed out after {self.timeout:.0f}s waiting for {what} "
            f"(last error: {last_error!r}){log}"
        )

    def _start_etcd(self) -> str:
        client, peer = free_port(), free_port()
        url = f"http://127.0.0.1:{client}"
        peer_url = f"http://127.0.0.1:{peer}"
        proc = self._spawn(
            "etcd",
            [
                "--name=maap",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=maap={peer_url}",
                "--initial-cluster-state=new",
                # Throwaway data: skip fsync, which dominates latency on shared disks.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            conn = http.client.HTTPConnection("127.0.0.1", client, timeout=2)
            try:
                conn.request("GET", "/health")
                resp = conn.getresponse()
                return resp.status == 200 and json.loads(resp.read()).get("health") == "true"
            finally:
                conn.close()

        self._wait("etcd healthy", healthy, proc=proc)
        return url

    def _start_apiserver(self, pki: _Pki, etcd_url: str) -> None:
        self._api_port = free_port()
        self.server = f"https://{self.api_host}:{self._api_port}"
        extra_sans = [f"IP:{self.advertise_address}"] if self.advertise_address else []
        serving_crt, serving_key = pki.issue(
            "apiserver",
            "/CN=kube-apiserver",
            server_sans=[
                *extra_sans,
                "IP:127.0.0.1",
                f"IP:{SERVICE_IP}",
                "DNS:localhost",
                "DNS:kubernetes",
                "DNS:kubernetes.default",
                "DNS:kubernetes.default.svc",
                "DNS:kubernetes.default.svc.cluster.local",
            ],
        )
        admin_crt, admin_key = pki.issue("admin", "/O=system:masters/CN=maap-admin")
        self._write_kubeconfig(self.kubeconfig, pki, admin_crt, admin_key, "maap-admin")
        ctx = ssl.create_default_context(cafile=str(pki.ca_crt))
        ctx.load_cert_chain(str(admin_crt), str(admin_key))
        self._admin_ssl = ctx
        if self.advertise_address:
            kubelet_crt, kubelet_key = pki.issue(
                "apiserver-kubelet-client", f"/CN={KUBELET_CLIENT_USER}"
            )
            address_args = [
                f"--bind-address={self.advertise_address}",
                f"--advertise-address={self.advertise_address}",
                "--endpoint-reconciler-type=lease",
                f"--kubelet-client-certificate={kubelet_crt}",
                f"--kubelet-client-key={kubelet_key}",
                f"--kubelet-certificate-authority={pki.ca_crt}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--enable-admission-plugins=NodeRestriction",
            ]
        else:
            address_args = [
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # 1.37 refuses a loopback address in the `kubernetes` Service's endpoints;
                # nothing in-cluster dials it here (no pods run), so keep none.
                "--endpoint-reconciler-type=none",
            ]
        if self.audit_log is not None:
            policy = self.workdir / "audit-policy.yaml"
            policy.write_text(
                "apiVersion: audit.k8s.io/v1\nkind: Policy\n"
                "omitStages: [RequestReceived]\nrules:\n- level: Metadata\n"
            )
            address_args += [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}"]
        proc = self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                *address_args,
                f"--secure-port={self._api_port}",
                f"--cert-dir={self.workdir / 'apiserver'}",
                f"--tls-cert-file={serving_crt}",
                f"--tls-private-key-file={serving_key}",
                f"--client-ca-file={pki.ca_crt}",
                "--authorization-mode=Node,RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--profiling=false",
            ],
            # Pods on the real node dial it with busybox's wget, whose TLS 1.2 client sends
            # no signature_algorithms; Go 1.25+ refuses such a ClientHello unless tlssha1=1
            # (SHA-1 handshake signatures for those clients only; TLS 1.3 is unaffected).
            env={"GODEBUG": "tlssha1=1"} if self.advertise_address else None,
        )

        def ready() -> bool:
            return self.request("GET", "/readyz")[0] == 200

        self._wait("kube-apiserver /readyz", ready, proc=proc)
        if self.advertise_address:
            self._bind_kubelet_client()

    def _bind_kubelet_client(self) -> None:
        """RBAC for the API server's kubelet client (kubelets authorize it by webhook)."""
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "maap:apiserver-kubelet-client"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:kubelet-api-admin",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "User",
                    "name": KUBELET_CLIENT_USER,
                }
            ],
        }
        path = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
        status, body = self.request("POST", path, binding)
        if status not in (201, 409):
            raise ControlPlaneError(
                f"creating {binding['metadata']['name']}: HTTP {status}: {body}"
            )

    def _component_kubeconfig(self, pki: _Pki, name: str, subject: str) -> Path:
        crt, key = pki.issue(name, subject)
        path = self.workdir / f"{name}.kubeconfig"
        self._write_kubeconfig(path, pki, crt, key, name)
        return path

    def _start_controller_manager(self, pki: _Pki) -> None:
        kc = self._component_kubeconfig(
            pki, "kube-controller-manager", "/CN=system:kube-controller-manager"
        )
        port = free_port()
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--leader-elect=false",
                "--controllers=*",
                # One ServiceAccount per controller, as in a real cluster (RBAC-checked).
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_crt}",
                f"--cluster-signing-cert-file={pki.ca_crt}",
                f"--cluster-signing-key-file={pki.ca_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--cluster-name=maap-test",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
            ],
        )
        self._kcm_port = port

    def _start_scheduler(self, pki: _Pki) -> None:
        kc = self._component_kubeconfig(pki, "kube-scheduler", "/CN=system:kube-scheduler")
        port = free_port()
        self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
            ],
        )
        self._scheduler_port = port

    def _start_kwok(self, pki: _Pki) -> None:
        kc = self._component_kubeconfig(pki, "kwok", "/O=system:masters/CN=kwok")
        stages = sorted(STAGES_DIR.glob("*.yaml"))
        home = self.workdir / "kwok-home"
        home.mkdir(exist_ok=True)
        key, value = KWOK_NODE_ANNOTATION
        self._spawn(
            "kwok",
            [
                f"--kubeconfig={kc}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={key}={value}",
                f"--cidr={POD_CIDR}",
                "--node-ip=127.0.0.1",
                # kwok renews each node's Lease: the node lifecycle controller's heartbeat.
                "--node-lease-duration-seconds=40",
                *(f"--config={s}" for s in stages),
            ],
            # kwok also reads ~/.kwok/kwok.yaml: a private HOME keeps a user's config out.
            env={"HOME": str(home)},
        )

    def _create_nodes(self) -> None:
        for node in self.nodes:
            status, body = self.request("POST", "/api/v1/nodes", node.manifest())
            if status != 201:
                raise ControlPlaneError(f"creating node {node.name}: HTTP {status}: {body}")
        self._say(f"created nodes {', '.join(n.name for n in self.nodes)}")

    def _wait_ready(self) -> None:
        names = {n.name for n in self.nodes}

        def nodes_ready() -> bool:
            status, body = self.request("GET", "/api/v1/nodes")
            if status != 200:
                return False
            ready = set()
            for item in body["items"]:
                conds = {c["type"]: c["status"] for c in item["status"].get("conditions", [])}
                # The node lifecycle controller taints nodes it has not yet seen Ready.
                taints = item["spec"].get("taints") or []
                if conds.get("Ready") == "True" and not any(
                    t["key"].startswith("node.kubernetes.io/") for t in taints
                ):
                    ready.add(item["metadata"]["name"])
            return names <= ready

        def component_healthy(port: int) -> Callable[[], bool]:
            # Their serving certs are self-signed in memory; /healthz needs no auth.
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return lambda: _https(ctx, port, "GET", "/healthz")[0] == 200

        self._wait("kube-controller-manager /healthz", component_healthy(self._kcm_port))
        self._wait("kube-scheduler /healthz", component_healthy(self._scheduler_port))
        # The ServiceAccount controller creates it: proves the controllers are working.
        self._wait(
            "default ServiceAccount",
            lambda: (
                self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200
            ),
        )
        self._wait(f"nodes Ready ({', '.join(sorted(names))})", nodes_ready)

    def _apply_crds(self) -> None:
        if self.crds_dir is None or not self.crds_dir.is_dir():
            return
        files = sorted([*self.crds_dir.glob("*.yaml"), *self.crds_dir.glob("*.yml")])
        if not files:
            return
        args = ["apply", "--server-side", "--force-conflicts", "-o", "name"]
        for f in files:
            args += ["-f", str(f)]
        res = self.kubectl(*args, check=False)
        if res.returncode != 0:
            raise ControlPlaneError(f"kubectl apply of {self.crds_dir} failed:\n{res.stderr}")
        crds = [n for n in res.stdout.split() if n.startswith("customresourcedefinition")]
        if crds:
            res = self.kubectl(
                "wait", "--for=condition=Established", f"--timeout={self.timeout:.0f}s", *crds,
                check=False,
            )  # fmt: skip
            if res.returncode != 0:
                raise ControlPlaneError(f"CRDs not Established:\n{res.stdout}{res.stderr}")
        self._say(f"applied {len(files)} file(s) from {self.crds_dir}; CRDs Established: {crds}")

    def write_kubeconfig(self, path: Path, subject: str, name: str) -> Path:
        """A kubeconfig at `path` for a new client cert (subject "/O=group/CN=user") signed
        by this cluster's CA: for components started beside it (kubelet, kube-proxy, DNS)."""
        assert self.pki is not None, "control plane not started"
        crt, key = self.pki.issue(name, subject)
        self._write_kubeconfig(path, self.pki, crt, key, name)
        return path

    def _write_kubeconfig(self, path: Path, pki: _Pki, crt: Path, key: Path, user: str) -> None:
        # JSON is valid YAML, so every kubeconfig reader takes it.
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "maap-test",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": _b64(pki.ca_crt),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate-data": _b64(crt),
                        "client-key-data": _b64(key),
                    },
                }
            ],
            "contexts": [{"name": "maap-test", "context": {"cluster": "maap-test", "user": user}}],
            "current-context": "maap-test",
        }
        path.write_text(json.dumps(config, indent=2) + "\n")
        path.chmod(0o600)


def make_volume(core: Any, storage_class: str) -> None:
    """A PersistentVolume one claim of `storage_class` can bind (kwok clusters have no
    provisioner). `core`: a kubernetes CoreV1Api."""
    core.create_persistent_volume(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"pv-{uuid.uuid4().hex[:8]}"},
            "spec": {
                "capacity": {"storage": "5Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": storage_class,
                "hostPath": {"path": "/tmp/maap-test"},
            },
        }
    )


def _https(
    ctx: ssl.SSLContext,
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    host: str = "127.0.0.1",
) -> tuple[int, Any]:
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
    try:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read().decode(errors="replace")
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw
    finally:
        conn.close()


@contextlib.contextmanager
def running(**kwargs: Any) -> Iterator[ControlPlane]:
    """`with running() as cp:` starts a ControlPlane and always stops it."""
    cp = ControlPlane(**kwargs)
    try:
        yield cp.start()
    finally:
        cp.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the control plane and wait until Ctrl-C")
    up.add_argument("--bin-dir", type=Path, help="binaries (default: build.sh's cache dir)")
    up.add_argument("--workdir", type=Path, help="state dir (default: a new temp dir)")
    up.add_argument("--crds", type=Path, default=REPO_ROOT / "crds", help="YAMLs to apply")
    up.add_argument("--keep", action="store_true", help="keep the temp dir (logs) on exit")
    args = parser.parse_args(argv)

    # Ctrl-C and SIGTERM stop it; SIGINT is set explicitly because a shell starting us in
    # the background (`... up &`) makes us inherit it as ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    cp = ControlPlane(
        args.bin_dir, workdir=args.workdir, crds_dir=args.crds, keep_workdir=args.keep
    )
    try:
        cp.start()
        print(f"export KUBECONFIG={cp.kubeconfig}", flush=True)
        print(f"# {cp.version} at {cp.server}; logs in {cp.logs_dir}; Ctrl-C stops", flush=True)
        while True:
            for p in cp._procs:
                if p.popen.poll() is not None:
                    print(f"{p.name} exited ({p.popen.returncode}):\n{_tail(p.log)}", flush=True)
                    return 1
            time.sleep(1)
    except KeyboardInterrupt:
        return 0
    except ControlPlaneError as e:
        print(e, file=sys.stderr)
        return 1
    finally:
        cp.stop()


if __name__ == "__main__":
    sys.exit(main())
