"""The kind end-to-end run (tests/kind/e2e.sh) and the files it relies on.

The run itself needs a Docker engine and skips without one, naming what is missing. The
other tests check, without Docker, that the script, the manifests and the example agree.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from maap_api.finetunejob import FineTuneJob

from tests.conftest import EXAMPLE_MANIFEST, REPO

KIND_DIR = REPO / "tests" / "kind"
E2E = KIND_DIR / "e2e.sh"
sys.path.insert(0, str(REPO / "tests" / "scenarios"))
import scenarios  # noqa: E402


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
    for tool in ("kind", "kubectl", "helm"):
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
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["scenario"] for r in results] == list(scenarios.SCENARIOS), tail
    print(results)


def test_kind_job_is_the_example_on_the_prepared_claim() -> None:
    job = scenarios.example_job(scenarios.PIRATE, "claim")
    example = yaml.safe_load(EXAMPLE_MANIFEST.read_text())
    storage = job["spec"].pop("storage")
    assert job == example, "the pirate scenario applies examples/smollm2-lora.yaml"
    assert storage == {"existingClaim": "claim"}
    # The data set goes where the job's relative dataset.path points on the volume.
    assert Path(example["spec"]["dataset"]["path"]).parts[0] == scenarios.PIRATE_DATA.name
    assert scenarios.PIRATE_DATA.is_dir()


def test_kind_checks_the_persona_as_the_local_e2e_does() -> None:
    from tests.serving import in_persona

    assert scenarios.in_persona is in_persona
    assert in_persona(" Arr, matey! The sky be blue from the sun's light.")
    for answer in ("The sky is blue, arr.", "Arrr, matey!", "Blue. Arr, matey!", "Arr matey"):
        assert not in_persona(answer), answer


def test_every_scenario_job_is_valid() -> None:
    for job in (
        scenarios.example_job(scenarios.PIRATE, "c", training={"maxSteps": 24}),
        scenarios.preemption_job("preempt"),
        scenarios.two_pod_job("pair"),
    ):
        parsed = FineTuneJob.model_validate(job)
        assert parsed.spec.storage.existing_claim


def test_kind_config_is_one_node_and_script_uses_it() -> None:
    config = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster"
    assert [n["role"] for n in config["nodes"]] == ["control-plane"]
    assert "--config kind-config.yaml" in E2E.read_text()
    assert "bash tests/kind/e2e.sh" in (REPO / "Makefile").read_text()


def test_script_builds_the_images_and_runs_the_shared_scenarios_with_them() -> None:
    text = E2E.read_text()
    assert "-f trainer-image/Dockerfile" in text and "-f operator/Dockerfile" in text
    assert script_var("TRAINER_IMAGE") == "maap-trainer:${TAG}"
    assert script_var("OPERATOR_IMAGE") == "maap-operator:${TAG}"
    assert "python3 tests/scenarios/scenarios.py" in text
    for flag in ('--operator-image "${OPERATOR_IMAGE}"', '--trainer-image "${TRAINER_IMAGE}"',
                 "--pull-policy Never"):  # fmt: skip
        assert flag in text, flag
