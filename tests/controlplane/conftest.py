"""Fixtures for tests against a real control plane (tests/cluster/controlplane.py).

`control_plane` (session): etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
kwok with fake CPU and GPU nodes, started once; `.kubeconfig`, `.api_client()`.
`namespace` (per test): a fresh namespace, deleted afterwards.
Without the binaries the tests skip ("run tests/cluster/build.sh"); with CI=true they fail.
"""

from __future__ import annotations

import os
import re
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

CLUSTER_DIR = Path(__file__).resolve().parents[1] / "cluster"
sys.path.insert(0, str(CLUSTER_DIR))
from controlplane import ControlPlane, default_bin_dir, missing_binaries, wait_for  # noqa: E402

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

_startup: dict[str, float] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test in this directory needs the control plane, whether or not its module
    # remembered `pytestmark = pytest.mark.controlplane`.
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.controlplane)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if "seconds" in _startup:
        terminalreporter.write_line(
            f"control plane: started and ready in {_startup['seconds']:.1f}s"
        )


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the control plane is required)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    bin_dir = default_bin_dir()
    missing = missing_binaries(bin_dir)
    if missing:
        _unavailable(
            f"control-plane binaries missing in {bin_dir} ({', '.join(missing)}): "
            "run tests/cluster/build.sh"
        )
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        _unavailable("the Python `kubernetes` package is not installed: pip install -e .[dev]")
    t0 = time.monotonic()
    cp = ControlPlane(bin_dir, keep_workdir=os.environ.get("MAAP_KEEP_CONTROLPLANE") == "1")
    try:
        cp.start()
        _startup["seconds"] = time.monotonic() - t0
        yield cp
    finally:
        cp.stop()


@pytest.fixture
def api_client(control_plane: ControlPlane) -> Iterator[ApiClient]:
    """A kubernetes ApiClient as the cluster admin, closed after the test."""
    client = control_plane.api_client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def namespace(request: pytest.FixtureRequest, api_client: ApiClient) -> Iterator[str]:
    """A fresh namespace whose `default` ServiceAccount exists (so pods can be created)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(api_client)
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"maap.dev/test": "1"}))
    )

    def default_sa() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
            return True
        except ApiException as e:
            if e.status != 404:
                raise
            return False

    try:
        wait_for(f"ServiceAccount default in {name}", default_sa, timeout=30)
        yield name
    finally:
        try:
            # The namespace controller removes the contents in the background.
            core.delete_namespace(name)
        except ApiException as e:
            if e.status != 404:
                raise
