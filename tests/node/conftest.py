"""Fixtures for tests on a real kubelet node (tests/cluster/node.py).

`real_cluster` (session): a ControlPlane advertising 10.199.0.1, kwok's fake CPU and GPU
nodes (tainted `kwok.x-k8s.io/node=fake:NoSchedule`), and a RealNode (containerd, runc,
CNI bridge, kube-proxy, CoreDNS, hostPath provisioner). `namespace` (per test): a fresh
namespace, deleted afterwards.

Every test here is marked `realnode`. Without the prerequisites (root, the binaries of
tests/cluster/build.sh, runc, CNI plugins, iptables, conntrack, busybox-static) they skip
with the reason; with CI=true they fail instead.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

CLUSTER_DIR = Path(__file__).resolve().parents[1] / "cluster"
sys.path.insert(0, str(CLUSTER_DIR))
from controlplane import ControlPlane, default_bin_dir, missing_binaries, wait_for  # noqa: E402
from node import RealNode, missing_prerequisites  # noqa: E402
from node import real_cluster as start_real_cluster  # noqa: E402

_startup: dict[str, float] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.realnode)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if "node" in _startup:
        terminalreporter.write_line(
            f"real node: control plane + node ready in {_startup['total']:.1f}s "
            f"(node alone {_startup['node']:.1f}s)"
        )


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the real node is required)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def real_cluster_pair() -> Iterator[tuple[ControlPlane, RealNode]]:
    bin_dir = default_bin_dir()
    problems = missing_prerequisites(bin_dir)
    missing = missing_binaries(bin_dir)
    if missing:
        problems.insert(0, f"control-plane binaries missing in {bin_dir}: {', '.join(missing)}")
    if problems:
        _unavailable("real node unavailable: " + "; ".join(problems))
    t0 = time.monotonic()
    keep = os.environ.get("MAAP_KEEP_CONTROLPLANE") == "1"
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        # A plain `kill` (a CI timeout) tears the node down instead of leaving containers,
        # mounts and iptables rules behind (a later start would clean them up, though).
        signal.signal(signal.SIGTERM, _terminated)
    with start_real_cluster(keep_workdir=keep) as (cp, node):
        _startup["total"] = time.monotonic() - t0
        _startup["node"] = node.startup_seconds or 0.0
        yield cp, node


@pytest.fixture(scope="session")
def real_cluster(real_cluster_pair: tuple[ControlPlane, RealNode]) -> ControlPlane:
    """The control plane with the real node joined (`.kubectl()`, `.request()`)."""
    return real_cluster_pair[0]


@pytest.fixture(scope="session")
def real_node(real_cluster_pair: tuple[ControlPlane, RealNode]) -> RealNode:
    return real_cluster_pair[1]


@pytest.fixture
def namespace(request: pytest.FixtureRequest, real_cluster: ControlPlane) -> Iterator[str]:
    """A fresh namespace whose `default` ServiceAccount exists; deleted afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{uuid.uuid4().hex[:6]}"
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    status, out = real_cluster.request("POST", "/api/v1/namespaces", body)
    assert status == 201, out
    sa = f"/api/v1/namespaces/{name}/serviceaccounts/default"
    wait_for(f"ServiceAccount default in {name}", lambda: real_cluster.request("GET", sa)[0] == 200)
    try:
        yield name
    finally:
        real_cluster.request("DELETE", f"/api/v1/namespaces/{name}")
