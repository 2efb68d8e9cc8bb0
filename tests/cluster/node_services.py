"""Configuration the real node writes for its components and cluster objects it creates:
containerd's config, the CNI network, the KubeletConfiguration, kube-proxy's config, and
CoreDNS (Corefile, RBAC, the `kube-dns` Service with a selector-less EndpointSlice that
points at CoreDNS on the node address). Pure functions from paths and addresses to
text/dicts; tests/cluster/node.py writes and applies them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CLUSTER_DOMAIN = "cluster.local"
DNS_SERVICE_IP = "10.96.0.10"
CNI_NETWORK = "maap-node"
COREDNS_USER = "maap:coredns"
# The API server's Service ClusterIP range and the pod network, as in controlplane.py.
SERVICE_CIDR = "10.96.0.0/16"
CLUSTER_CIDR = "10.244.0.0/16"


def _toml_str(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def containerd_config(
    workdir: Path, *, socket: Path, cni_conf_dir: Path, cni_bin_dir: Path, runc: Path
) -> str:
    """containerd 2.4 (config version 4): everything under `workdir`, the CRI with the runc
    shim (cgroupfs), overlayfs, our CNI dir, no registry configuration (nothing to pull),
    and OOM score adjustments clamped to containerd's own (this host lacks
    CAP_SYS_RESOURCE: the kubelet asks -998 for every pod sandbox)."""
    q = _toml_str
    return f"""version = 4
root = {q(workdir / "root")}
state = {q(workdir / "state")}
temp = {q(workdir / "tmp")}
imports = []
disabled_plugins = [
  "io.containerd.nri.v1.nri",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs",
]

[plugins."io.containerd.server.v1.grpc"]
  address = {q(socket)}

[plugins."io.containerd.server.v1.ttrpc"]
  address = {q(str(socket) + ".ttrpc")}

[plugins."io.containerd.internal.v1.opt"]
  path = {q(workdir / "opt")}

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "docker.io/library/maap-pause:test"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = ""

[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = {q(runc)}
        Root = {q(workdir / "runc")}
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [{q(cni_bin_dir)}]
    conf_dir = {q(cni_conf_dir)}
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


def cni_config(*, bridge: str, pod_cidr: str, gateway: str, ipam_dir: Path) -> dict[str, Any]:
    """bridge + host-local IPAM + portmap; containerd adds the loopback plugin itself.
    No ipMasq: pod traffic is never NATed out of the node."""
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr, "gateway": gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(
    *,
    workdir: Path,
    address: str,
    port: int,
    healthz_port: int,
    runtime_socket: Path,
    ca: Path,
    tls_crt: Path,
    tls_key: Path,
    cgroup_root: str,
    resolv_conf: Path,
    max_open_files: int,
) -> dict[str, Any]:
    endpoint = f"unix://{runtime_socket}"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,  # this host mounts cgroup v1 controllers (hybrid)
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "containerRuntimeEndpoint": endpoint,
        "imageServiceEndpoint": endpoint,
        "address": address,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(tls_crt),
        "tlsPrivateKeyFile": str(tls_key),
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "authentication": {
            "anonymous": {"enabled": False},
            "x509": {"clientCAFile": str(ca)},
            "webhook": {"enabled": True, "cacheTTL": "10s"},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [DNS_SERVICE_IP],
        "resolvConf": str(resolv_conf),  # empty: pods get no search domains of the host's
        "podLogsDir": str(workdir / "pod-logs"),
        "volumePluginDir": str(workdir / "volume-plugins"),
        "maxOpenFiles": max_open_files,  # the kubelet sets its own RLIMIT_NOFILE to this
        "oomScoreAdj": 0,  # lowering it needs CAP_SYS_RESOURCE
        "makeIPTablesUtilChains": False,
        "protectKernelDefaults": False,
        "failSwapOn": False,
        "serializeImagePulls": False,
        # A test machine with big images and a fuller disk must not evict or GC images.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "imageMinimumGCAge": "24h",
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
            "imagefs.inodesFree": "1%",
        },
        "evictionPressureTransitionPeriod": "30s",
        "nodeStatusUpdateFrequency": "5s",
        "nodeStatusReportFrequency": "30s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "shutdownGracePeriod": "0s",
        "kernelMemcgNotification": False,
        "localStorageCapacityIsolation": True,
        "maxPods": 50,
        "logging": {"format": "text", "verbosity": 1},
    }


def kube_proxy_config(
    *, kubeconfig: Path, node_name: str, address: str, healthz_port: int, metrics_port: int
) -> dict[str, Any]:
    """iptables mode; leaves conntrack sysctls and route_localnet alone; NodePorts only on
    the node address."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "clusterCIDR": CLUSTER_CIDR,
        "hostnameOverride": node_name,
        "bindAddress": address,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "nodePortAddresses": [f"{address}/32"],
        "oomScoreAdj": 0,
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": {
            "localhostNodePorts": False,
            "masqueradeAll": False,
            "syncPeriod": "30s",
            "minSyncPeriod": "0s",
        },
    }


def corefile(*, address: str, kubeconfig: Path, health_port: int, ready_port: int) -> str:
    """cluster.local and the reverse zones of the Service and pod CIDRs, from the API; any
    other name gets REFUSED (no server block for it): nothing is forwarded off the host."""
    zones = f"{CLUSTER_DOMAIN} 96.10.in-addr.arpa 244.10.in-addr.arpa"
    blocks = " ".join(f"{z}:53" for z in zones.split())
    return f"""{blocks} {{
    bind {address}
    errors
    health 127.0.0.1:{health_port}
    ready 127.0.0.1:{ready_port}
    kubernetes {zones} {{
        kubeconfig {kubeconfig} maap-test
        pods insecure
        ttl 5
    }}
    cache 5
    loadbalance
}}
"""


def coredns_rbac() -> list[tuple[str, dict[str, Any]]]:
    """(collection path, object) pairs: what the kubernetes plugin reads."""
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": COREDNS_USER},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["endpoints", "services", "pods", "namespaces"],
                "verbs": ["list", "watch"],
            },
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["list", "watch"],
            },
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": COREDNS_USER},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": COREDNS_USER,
        },
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": COREDNS_USER}
        ],
    }
    return [(f"{rbac}/clusterroles", role), (f"{rbac}/clusterrolebindings", binding)]


def kube_dns_objects(address: str, node_name: str) -> list[tuple[str, dict[str, Any]]]:
    """The `kube-dns` Service at 10.96.0.10 (no selector) and its EndpointSlice: CoreDNS on
    the node address, which kube-proxy DNATs pod queries to."""
    ports = [("dns", "UDP"), ("dns-tcp", "TCP")]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kube-dns",
            "namespace": "kube-system",
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"},
        },
        "spec": {
            "clusterIP": DNS_SERVICE_IP,
            "ports": [{"name": n, "port": 53, "protocol": p, "targetPort": 53} for n, p in ports],
        },
    }
    endpoints = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "kube-dns-node",
            "namespace": "kube-system",
            "labels": {
                "kubernetes.io/service-name": "kube-dns",
                "endpointslice.kubernetes.io/managed-by": "maap-realnode",
            },
        },
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [address], "conditions": {"ready": True}, "nodeName": node_name}
        ],
        "ports": [{"name": n, "port": 53, "protocol": p} for n, p in ports],
    }
    return [
        ("/api/v1/namespaces/kube-system/services", service),
        ("/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices", endpoints),
    ]
