"""`maap` on bad input: one readable line, exit 2, no traceback, nothing half-written."""

from __future__ import annotations

import io
import json
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


# -- one serve command: the pod, `maap run` and `maap serve` ---------------------------------

SERVING = {"port": 9123, "maxBatchSize": 3, "maxQueue": 7, "maxTokensLimit": 64,
           "auth": {"enabled": True}}  # fmt: skip


def _local_job(tmp_path: Path):
    from maap.local.runner import LocalRunner, resolve_trainer_config
    from maap.manifest import load_manifest
    from rich.console import Console

    path = manifest(tmp_path, serving=SERVING)
    job = load_manifest(path)
    cfg = resolve_trainer_config(job, path.parent, tmp_path / "out")
    return job, LocalRunner(cfg, Console(file=io.StringIO()))


def test_pod_maap_run_and_maap_serve_start_the_same_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maap import builders
    from maap.local.serving import job_config_beside, local_server
    from maap.podspec import CONFIG_PATH, OperatorSettings
    from maap.stages import serve_command

    monkeypatch.delenv("MAAP_SERVING_TOKEN", raising=False)
    job, runner = _local_job(tmp_path)
    deployment = builders.build_serving_deployment(job, "uid", OperatorSettings())
    pod = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    name = job.metadata.name
    assert pod == serve_command(CONFIG_PATH, "/workspace/output/onnx", name)

    ran = runner.server("127.0.0.1", 9123)  # what `maap run` starts after the export
    onnx = runner.output_dir / "onnx"
    # What `maap serve OUTPUT/JOB/onnx` starts: the job's config found beside the model.
    served = local_server(onnx, job_config_beside(onnx), "127.0.0.1", 9123)
    assert ran.argv == served.argv == [
        sys.executable, "-m", "maap_trainer", "serve", "--config", str(runner.config_path),
        "--model-dir", str(onnx), "--model-name", name, "--host", "127.0.0.1", "--port", "9123",
    ]  # fmt: skip
    # The same flags everywhere; locally only where it listens is added.
    flags = [a for a in pod if a.startswith("--")]
    assert [a for a in ran.argv if a.startswith("--")] == [*flags, "--host", "--port"]
    # ... and the same serving settings: the config files differ only in their paths.
    pod_config = json.loads(builders.build_config_map(job, "uid")["data"]["config.json"])
    local_config = json.loads(runner.config_path.read_text())
    assert local_config["serving"] == pod_config["serving"]
    assert local_config["serving"]["maxBatchSize"] == 3
    # The token reaches both local servers in the variable the config names.
    token_env = local_config["serving"]["authTokenEnv"]
    token_file = runner.output_dir / "serving-token"
    assert ran.env[token_env] == served.env[token_env] == token_file.read_text().strip()
    assert len(ran.env[token_env]) >= 32 and token_file.stat().st_mode & 0o777 == 0o600
    assert served.token_hint == f"$(cat {token_file})"


def test_maap_serve_keeps_the_jobs_auth(tmp_path: Path) -> None:
    _, runner = _local_job(tmp_path)
    runner.write_config()
    # The export, linked into the job's output directory from elsewhere.
    export = tmp_path / "exports" / "int4"
    export.mkdir(parents=True)
    (export / "genai_config.json").write_text("{}")
    onnx = runner.output_dir / "onnx"
    onnx.symlink_to(export)
    # No token anywhere: the job's config requires one, so maap serve refuses to start open.
    done = maap("serve", str(onnx))
    assert_one_line_error(
        done, "serving.authTokenEnv: the server requires a bearer token from $MAAP_SERVING_TOKEN"
    )
    assert_one_line_error(maap("serve", str(onnx), "--config", str(tmp_path / "nope.json")),
                          "--config: ")  # fmt: skip


@pytest.mark.slow
def test_maap_serve_of_a_run_output_serves_with_its_auth_and_limits(
    tmp_path: Path,
    int4_export,
) -> None:
    import httpx

    from tests.conftest import free_port
    from tests.serving import Server, wait_ready

    _, runner = _local_job(tmp_path)
    runner.write_config()
    (runner.output_dir / "onnx").symlink_to(int4_export.onnx)
    runner.server("127.0.0.1", 1)  # creates the job's token, as `maap run` does
    token = (runner.output_dir / "serving-token").read_text().strip()
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "maap.cli", "serve", str(runner.output_dir / "onnx"),
             "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = Server(child, f"http://127.0.0.1:{port}", log)
    try:
        wait_ready(server)
        body = {"model": runner.cfg.job_name, "max_tokens": 8,
                "messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip
        url = f"{server.api}/chat/completions"
        assert httpx.post(url, json=body, timeout=60).status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.post(url, json=body, headers=auth, timeout=60).status_code == 200
        too_long = httpx.post(url, json={**body, "max_tokens": 65}, headers=auth, timeout=60)
        assert too_long.status_code == 400, too_long.text  # the job's maxTokensLimit: 64
    finally:
        child.terminate()
        child.wait(timeout=60)


def test_locations_with_brackets_are_printed_as_written(tmp_path) -> None:
    """User text is never read as console markup (hf://org/name[@revision] was eaten)."""
    import yaml
    from maap.cli import app
    from typer.testing import CliRunner

    from tests.test_api import MINIMAL

    spec = {**MINIMAL["spec"], "dataset": {"path": "ftp://host/[x]/data.jsonl"}}
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump({**MINIMAL, "spec": spec}))
    result = CliRunner().invoke(app, ["validate", str(manifest)])
    assert result.exit_code == 2, result.output
    assert "hf://datasets/org/name[@revision][/file]" in " ".join(result.stderr.split())


def test_rbac_gateway_prints_the_gateways_bindings() -> None:
    import yaml

    result = maap("rbac", "--gateway", "--namespace", "platform")
    assert result.returncode == 0, result.stderr
    documents = list(yaml.safe_load_all(result.stdout))
    kinds = [d["kind"] for d in documents]
    assert kinds == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]
    assert documents[0]["metadata"]["namespace"] == "platform"
    jobs_rule = next(r for r in documents[1]["rules"] if "finetunejobs" in r["resources"])
    assert {"create", "patch"} <= set(jobs_rule["verbs"]) and "delete" not in jobs_rule["verbs"]
