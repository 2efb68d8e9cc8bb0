"""What the scenarios (tests/scenarios, run on kind and on the real node) apply, validated
by the real API server with a server-side dry run in a Pod Security "restricted"
namespace: the data claim, the helper pods, and every scenario's FineTuneJob."""

from __future__ import annotations

import json
import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "scenarios"))
import scenarios
from scenario_steps import RESTRICTED, Images, helper_pod


def test_scenario_manifests_pass_server_side_dry_run(control_plane, namespace) -> None:
    labels = [f"{key}={value}" for key, value in RESTRICTED.items()]
    control_plane.kubectl("label", "namespace", namespace, *labels, "--overwrite")
    images = Images("maap-operator:e2e", "maap-trainer:e2e", "Never")
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    documents = [
        claim,
        helper_pod("loader", images, ["sleep", "3600"], "data"),
        helper_pod("client", images, ["python", "-c", "pass"], None),
        scenarios.example_job(scenarios.PIRATE, "data", training={"maxSteps": 24}),
        scenarios.preemption_job("preempt"),
        scenarios.two_pod_job("pair"),
    ]
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": documents})
    manifest = control_plane.workdir / f"scenarios-{namespace}.json"
    manifest.write_text(body)
    done = control_plane.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", str(manifest),
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "violates PodSecurity" not in done.stderr
    created = [line for line in done.stdout.splitlines() if "(server dry run)" in line]
    assert len(created) == len(documents), done.stdout
