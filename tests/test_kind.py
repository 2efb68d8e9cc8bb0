"""The kind end-to-end run (tests/kind/e2e.sh) and the files it relies on.

The run itself needs a Docker engine and skips without one, naming what is missing. The
other tests check, without Docker, that the script, the manifests and the example agree.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from maap.api import FineTuneJob
from maap.builders import WORKSPACE

from tests.conftest import EXAMPLE_MANIFEST, REPO

KIND_DIR = REPO / "tests" / "kind"
E2E = KIND_DIR / "e2e.sh"
sys.path.insert(0, str(REPO / "tests" / "cluster"))
from controlplane import default_bin_dir  # noqa: E402


def script_var(name: str) -> str:
    match = re.search(rf'^{name}="?([^"\n]+)"?$', E2E.read_text(), re.M)
    assert match, f"{name} not set in e2e.sh"
    return match.group(1)


def missing_prerequisite() -> str | None:
    if not shutil.which("docker"):
        return "no Docker: the docker CLI is not on PATH (kind runs its nodes in Docker)"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        lines = (info.stderr or info.stdout).strip().splitlines()
        return f"no Docker engine answers `docker info`: {lines[-1] if lines else 'no output'}"
    for tool in ("kind", "kubectl", "helm", "curl"):
        if not shutil.which(tool):
            return f"{tool} not found on PATH (the kind end-to-end run needs it)"
    return None


@pytest.mark.kind
@pytest.mark.timeout(5400)
def test_e2e_on_kind() -> None:
    reason = missing_prerequisite()
    if reason:
        pytest.skip(reason)
    done = subprocess.run(["bash", str(E2E)], capture_output=True, text=True, timeout=5000)
    tail = (done.stdout + done.stderr)[-6000:]
    assert done.returncode == 0, tail
    answer = re.search(r"^ANSWER: (.+)$", done.stdout, re.M)
    assert answer, tail
    print(answer.group(0))
    # The persona the example teaches (README): a reply without it means training or
    # serving went wrong somewhere on the way.
    assert "arr" in answer.group(1).lower(), answer.group(1)


def kustomized() -> dict[str, Any]:
    kubectl = default_bin_dir() / "kubectl"
    binary = str(kubectl) if kubectl.is_file() else shutil.which("kubectl")
    if not binary:
        pytest.skip("kubectl not found: run tests/cluster/build.sh")
    done = subprocess.run(
        [binary, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(KIND_DIR)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return yaml.safe_load(done.stdout)


def data_volume() -> tuple[dict[str, Any], dict[str, Any]]:
    claim, pod = yaml.safe_load_all((KIND_DIR / "data-volume.yaml").read_text())
    return claim, pod


def test_kind_job_is_the_example_on_the_prepared_claim() -> None:
    job = kustomized()
    example = yaml.safe_load(EXAMPLE_MANIFEST.read_text())
    storage = job["spec"].pop("storage")
    assert job == example, "tests/kind must apply examples/smollm2-lora.yaml unchanged"
    claim, _ = data_volume()
    assert storage == {"existingClaim": claim["metadata"]["name"]}
    FineTuneJob.model_validate({**job, "spec": {**job["spec"], "storage": storage}})


def test_script_names_match_the_example() -> None:
    example = FineTuneJob.model_validate(yaml.safe_load(EXAMPLE_MANIFEST.read_text()))
    assert script_var("JOB") == example.metadata.name
    assert f'"{example.metadata.name}"' in E2E.read_text()  # the model name asked for
    assert f"${{LOCAL_PORT}}:{example.spec.serving.port}" in E2E.read_text()
    # The data set goes where the job's relative dataset.path points on the volume.
    data_dir = Path(example.spec.dataset.path).parts[0]
    assert (REPO / "examples" / data_dir).is_dir()
    assert f"cp examples/{data_dir} maap-data-loader:{WORKSPACE}/{data_dir}" in E2E.read_text()


def test_loader_pod_mounts_the_claim_where_stage_pods_do() -> None:
    claim, pod = data_volume()
    spec = pod["spec"]
    [volume] = spec["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    [container] = spec["containers"]
    assert {"name": volume["name"], "mountPath": WORKSPACE} in container["volumeMounts"]
    assert spec["securityContext"]["runAsUser"] == 1000  # the trainer's uid
    assert container["image"] == "MAAP_TRAINER_IMAGE"  # substituted by e2e.sh
    assert "s|MAAP_TRAINER_IMAGE|${TRAINER_IMAGE}|" in E2E.read_text()


def test_kind_config_is_one_node_and_script_uses_it() -> None:
    config = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster"
    assert [n["role"] for n in config["nodes"]] == ["control-plane"]
    assert "--config kind-config.yaml" in E2E.read_text()
    assert "bash tests/kind/e2e.sh" in (REPO / "Makefile").read_text()


def test_script_builds_the_images_the_chart_is_given() -> None:
    text = E2E.read_text()
    assert "-f trainer-image/Dockerfile" in text and "-f operator/Dockerfile" in text
    for value in ("image.repository=maap-operator", "trainer.image.repository=maap-trainer",
                  "image.pullPolicy=Never", "trainer.image.pullPolicy=Never"):  # fmt: skip
        assert f"--set {value}" in text, value
    assert script_var("TRAINER_IMAGE") == "maap-trainer:${TAG}"
    assert script_var("OPERATOR_IMAGE") == "maap-operator:${TAG}"
