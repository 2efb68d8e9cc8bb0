"""The publish stage against a real S3 server: a finished job's models copied and read back."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from maap_api.transfer_results import PublishResult

from tests.fetch_servers import run_stage, stage_config
from tests.servers.fixtures import s3_server  # noqa: F401  (the fixture)

MiB = 1 << 20
JOB = "fetch-test"  # stage_config's jobName


def finished_job(output: Path, big_bytes: int = 0) -> dict[str, bytes]:
    """An output directory as the train and export stages leave it; returns its files."""
    files = {
        "merged/config.json": b'{"model_type": "llama"}',
        "merged/model.safetensors": os.urandom(big_bytes or 4096),
        "onnx/model.onnx": b"onnx" * 100,
        "onnx/genai_config.json": b"{}",
        "adapter/adapter_config.json": b'{"r": 8}',
        "adapter/adapter_model.safetensors": b"lora" * 50,
        "onnx-base/model.onnx": b"base" * 10,
        f"adapters/{JOB}.onnx_adapter": b"adapter" * 10,
        # Not published: training's own bookkeeping.
        "checkpoints/checkpoint-1/optimizer.pt": b"x",
        "metrics.json": b"{}",
    }
    for name, body in files.items():
        (output / name).parent.mkdir(parents=True, exist_ok=True)
        (output / name).write_bytes(body)
    return files


def keys(server) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key}


@pytest.fixture()
def bucket(s3_server, request) -> str:  # noqa: F811
    name = "p-" + hashlib.sha1(request.node.name.encode()).hexdigest()[:12]
    s3_server.create_bucket(name)
    return name


def test_the_models_are_copied_under_the_prefix_and_read_back(
    tmp_path: Path,
    s3_server,  # noqa: F811
    bucket: str,
) -> None:
    files = finished_job(tmp_path / "out")
    prefix = f"s3://{bucket}/runs/{JOB}/"
    config = stage_config(
        tmp_path, {"path": "x.jsonl"}, output={"path": prefix}, s3={"endpoint": s3_server.endpoint}
    )
    run = run_stage("publish", config, tmp_path / "cache", env=keys(s3_server))
    assert run.returncode == 0, run.stderr
    result = PublishResult.model_validate(run.json())
    assert result == PublishResult(
        merged_model=f"{prefix}merged/",
        onnx_model=f"{prefix}onnx/",
        adapter=f"{prefix}adapter/",
        onnx_base_model=f"{prefix}onnx-base/",
        onnx_adapter=f"{prefix}adapters/{JOB}.onnx_adapter",
        files=8,
        bytes=sum(len(b) for n, b in files.items() if not n.startswith(("checkpoints", "metrics"))),
    )
    on_disk = json.loads((tmp_path / "out" / "publish.json").read_text())
    assert PublishResult.model_validate(on_disk) == result
    # The pod's termination message carries the URIs to the operator (status.outputs).
    assert PublishResult.model_validate_json(run.termination_message) == result

    published = s3_server.list(bucket, f"runs/{JOB}/")
    expected = sorted(
        [f"runs/{JOB}/{n}" for n in files if not n.startswith(("checkpoints", "metrics"))]
        + [f"runs/{JOB}/publish.json"]
    )
    assert published == expected
    for name, body in files.items():
        if not name.startswith(("checkpoints", "metrics")):
            assert s3_server.get(bucket, f"runs/{JOB}/{name}") == body, name
    manifest = json.loads(s3_server.get(bucket, f"runs/{JOB}/publish.json"))
    assert PublishResult.model_validate(manifest) == result


def test_a_big_file_goes_up_in_parts(
    tmp_path: Path,
    s3_server,  # noqa: F811
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Multipart through upload_files, in process: parts of 5 MiB (S3's least) instead of
    the stage's 64 MiB, so the file stays small on this machine."""
    from maap_api.storage_access import S3Access
    from maap_trainer.fetch import s3
    from maap_trainer.fetch.meter import TransferMeter

    monkeypatch.setattr(s3, "PART_BYTES", 5 * MiB)
    for name, value in keys(s3_server).items():
        monkeypatch.setenv(name, value)
    parts: list[int] = []
    real_client = s3.s3_client

    def counting_client(access: S3Access):
        client = real_client(access)
        client.meta.events.register(
            "before-parameter-build.s3.UploadPart",
            lambda params, **_: parts.append(params["PartNumber"]),
        )
        return client

    monkeypatch.setattr(s3, "s3_client", counting_client)
    body = os.urandom(11 * MiB + 5)
    (tmp_path / "weights.bin").write_bytes(body)
    meter = TransferMeter("test", len(body), verb="uploaded")
    access = S3Access(endpoint=s3_server.endpoint)
    s3.upload_files("output.path", access, bucket, [(tmp_path / "weights.bin", "w.bin")], meter)
    assert sorted(parts) == [1, 2, 3] and meter.done == len(body)
    assert s3_server.get(bucket, "w.bin") == body


def test_a_wrong_key_is_the_servers_403(tmp_path: Path, s3_server, bucket: str) -> None:  # noqa: F811
    finished_job(tmp_path / "out")
    prefix = f"s3://{bucket}/runs/"
    config = stage_config(
        tmp_path, {"path": "x.jsonl"}, output={"path": prefix}, s3={"endpoint": s3_server.endpoint}
    )
    env = {**keys(s3_server), "AWS_SECRET_ACCESS_KEY": "wrong"}
    run = run_stage("publish", config, tmp_path / "cache", env=env)
    assert run.returncode == 2
    assert run.error_line.startswith(f"output.path: {prefix}")
    assert ": 403 SignatureDoesNotMatch: " in run.error_line, run.error_line
    assert s3_server.list(bucket) == []
    assert not (tmp_path / "out" / "publish.json").exists()


def test_without_an_output_path_nothing_is_published(tmp_path: Path) -> None:
    finished_job(tmp_path / "out")
    run = run_stage("publish", stage_config(tmp_path, {"path": "x.jsonl"}), tmp_path / "cache")
    assert run.returncode == 0, run.stderr
    assert PublishResult.model_validate(run.json()) == PublishResult()


def test_an_empty_output_directory_is_an_error(tmp_path: Path, s3_server, bucket: str) -> None:  # noqa: F811
    config = stage_config(
        tmp_path,
        {"path": "x.jsonl"},
        output={"path": f"s3://{bucket}/x/"},
        s3={"endpoint": s3_server.endpoint},
    )
    run = run_stage("publish", config, tmp_path / "cache", env=keys(s3_server))
    assert run.returncode == 2
    assert run.error_line.startswith("output.path: ") and "no model to publish" in run.error_line
