"""`maap` on bad input: one readable line, exit 2, no traceback, nothing half-written."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from maap.crd import render_crd

from tests.conftest import EXAMPLE_MANIFEST, PIRATE_DATA


def maap(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "maap.cli", *args],
        capture_output=True, text=True, timeout=120, cwd=cwd,
    )  # fmt: skip


def manifest(tmp_path: Path, **spec_changes) -> Path:
    doc = yaml.safe_load(EXAMPLE_MANIFEST.read_text())
    doc["spec"]["dataset"]["path"] = str(PIRATE_DATA / "train.jsonl")
    for key, value in spec_changes.items():
        doc["spec"][key] = value
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def assert_one_line_error(done: subprocess.CompletedProcess[str], expected: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"trainig": {"epochs": 1}}, "spec.trainig: unknown field (valid fields: model"),
        ({"method": {"type": "prefix-tuning"}}, "spec.method.type: Input should be 'lora'"),
        ({"dataset": {"path": "nowhere.jsonl"}}, "spec.dataset.path: "),
    ],
)
def test_run_rejects_bad_manifests(tmp_path: Path, changes, expected: str) -> None:
    out = tmp_path / "out"
    done = maap("run", str(manifest(tmp_path, **changes)), "--no-serve", "-o", str(out))
    assert_one_line_error(done, expected)
    assert not out.exists(), "a rejected run must not leave artifacts behind"


def test_missing_dataset_names_the_path(tmp_path: Path) -> None:
    done = maap("validate", str(manifest(tmp_path, dataset={"path": "nowhere.jsonl"})))
    assert_one_line_error(done, "nowhere.jsonl: no such file")


def test_malformed_jsonl_row_names_its_line(tmp_path: Path) -> None:
    lines = (PIRATE_DATA / "train.jsonl").read_text().splitlines()[:5]
    lines.insert(3, '{"messages": [{"role": "user", "content": "unterminated}')
    data = tmp_path / "broken.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    done = maap("run", str(manifest(tmp_path, dataset={"path": str(data)})), "-o", str(out))
    assert_one_line_error(done, "broken.jsonl:4: invalid JSON")
    assert not out.exists()


def test_port_in_use_fails_before_training(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        out = tmp_path / "out"
        done = maap("run", str(manifest(tmp_path)), "--port", str(port), "-o", str(out))
    assert_one_line_error(done, f"port {port} on 127.0.0.1 is already in use")
    assert not out.exists()


def test_missing_manifest_and_invalid_yaml(tmp_path: Path) -> None:
    assert_one_line_error(maap("run", str(tmp_path / "nope.yaml")), "nope.yaml: no such file")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: FineTuneJob\nspec: {model: [\n")
    assert_one_line_error(maap("validate", str(bad)), "invalid YAML")


def test_validate_and_crd_commands(tmp_path: Path) -> None:
    done = maap("validate", str(EXAMPLE_MANIFEST))
    assert done.returncode == 0 and "is valid" in done.stdout
    crd = maap("crd")
    assert crd.returncode == 0 and crd.stdout == render_crd()
