"""The fetch stage against a real S3 server (rclone serve s3 on 127.0.0.1, SigV4 auth)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from maap_api.sources import cached_model_dir, fetched_dataset_path
from maap_api.stage_config import load_trainer_config
from maap_api.transfer_results import MODEL_COMPLETE_MARKER, CachedModelInfo, FetchResult

from tests.fetch_servers import model_spec, run_stage, stage_config, tiny_checkpoint
from tests.servers.fixtures import s3_server  # noqa: F401  (the fixture)

ROWS = b"".join(json.dumps({"text": f"row {i}"}).encode() + b"\n" for i in range(5))


def keys(server, **override: str) -> dict[str, str]:
    """The server's credentials as the pod gets them (the Secret's keys as env vars)."""
    return {
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        **override,
    }


@pytest.fixture()
def bucket(s3_server, request) -> str:  # noqa: F811
    name = "t-" + hashlib.sha1(request.node.name.encode()).hexdigest()[:12]
    s3_server.create_bucket(name)
    s3_server.put(name, "sets/train.jsonl", ROWS)
    return name


def test_a_data_set_from_an_s3_object_end_to_end(tmp_path: Path, s3_server, bucket) -> None:  # noqa: F811
    uri = f"s3://{bucket}/sets/train.jsonl"
    digest = hashlib.sha256(ROWS).hexdigest()
    config = stage_config(
        tmp_path, {"path": uri, "sha256": digest}, s3={"endpoint": s3_server.endpoint}
    )
    run = run_stage("fetch", config, tmp_path / "cache", env=keys(s3_server))
    assert run.returncode == 0, run.stderr
    result = FetchResult.model_validate(run.json())
    local = fetched_dataset_path(uri, load_trainer_config(config).fetched_inputs_dir)
    assert result.dataset.path == str(local.absolute()) and local.read_bytes() == ROWS
    assert (result.dataset.rows, result.dataset.sha256) == (5, digest)


def test_a_wrong_secret_key_is_the_servers_403_in_one_line(
    tmp_path: Path,
    s3_server,  # noqa: F811
    bucket,
) -> None:
    uri = f"s3://{bucket}/sets/train.jsonl"
    config = stage_config(tmp_path, {"path": uri}, s3={"endpoint": s3_server.endpoint})
    run = run_stage(
        "fetch", config, tmp_path / "c", env=keys(s3_server, AWS_SECRET_ACCESS_KEY="wrong")
    )
    assert run.returncode == 2
    assert run.error_line.startswith(f"dataset.path: {uri}: 403 SignatureDoesNotMatch: ")
    assert run.error_line.endswith(
        "(the secret key is wrong? AWS_SECRET_ACCESS_KEY, from spec.s3.secretName)"
    )
    assert run.termination_message == run.error_line
    assert not (tmp_path / "out" / "inputs").exists() or not any(
        p.is_file() for p in (tmp_path / "out" / "inputs").rglob("*")
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("s3://{bucket}/sets/missing.jsonl", "404 NoSuchKey"),
        ("s3://nobucket-{bucket}/sets/train.jsonl", "404 NoSuchBucket"),
    ],
)
def test_a_missing_object_or_bucket_is_named(
    tmp_path: Path,
    s3_server,  # noqa: F811
    bucket,
    path: str,
    expected: str,
) -> None:
    uri = path.format(bucket=bucket)
    config = stage_config(tmp_path, {"path": uri}, s3={"endpoint": s3_server.endpoint})
    run = run_stage("fetch", config, tmp_path / "c", env=keys(s3_server))
    assert run.returncode == 2
    assert run.error_line.startswith(f"dataset.path: {uri}: {expected}"), run.error_line


def test_no_credentials_goes_unsigned_and_is_refused(tmp_path: Path, s3_server, bucket) -> None:  # noqa: F811
    uri = f"s3://{bucket}/sets/train.jsonl"
    config = stage_config(tmp_path, {"path": uri}, s3={"endpoint": s3_server.endpoint})
    run = run_stage("fetch", config, tmp_path / "c")
    assert run.returncode == 2
    assert run.error_line.startswith(f"dataset.path: {uri}: 403 AccessDenied"), run.error_line
    assert "no credentials were sent" in run.error_line


def test_an_unreachable_endpoint_is_one_line(tmp_path: Path, s3_server) -> None:  # noqa: F811
    from maap_trainer.ports import free_port

    port = free_port()
    uri = "s3://data/train.jsonl"
    config = stage_config(tmp_path, {"path": uri}, s3={"endpoint": f"http://127.0.0.1:{port}"})
    run = run_stage("fetch", config, tmp_path / "c", env=keys(s3_server))
    assert run.returncode == 2
    assert (
        run.error_line == f"dataset.path: {uri}: cannot reach 127.0.0.1:{port} (connection refused)"
    )


def test_a_model_from_an_s3_prefix_is_cached_once(tmp_path: Path, s3_server, bucket) -> None:  # noqa: F811
    files = tiny_checkpoint()
    for name, body in {**files, "model.Q4.gguf": b"gguf", "original/params.json": b"{}"}.items():
        s3_server.put(bucket, f"models/tiny/{name}", body)
    uri = f"s3://{bucket}/models/tiny/"
    cache = tmp_path / "cache"
    config = stage_config(
        tmp_path,
        {"path": str(tmp_path / "rows.jsonl")},
        model={"path": uri},
        s3={"endpoint": s3_server.endpoint},
    )
    run = run_stage("fetch-model", model_spec(config), cache, env=keys(s3_server))
    assert run.returncode == 0, run.stderr
    info = CachedModelInfo.model_validate(run.json())
    assert run.termination_message == run.stdout.strip()  # the download Job's result
    directory = cached_model_dir(uri, cache)
    assert info.path == str(directory) and info.revision is None
    on_disk = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    assert on_disk == {*files, MODEL_COMPLETE_MARKER}  # no GGUF, no original/
    assert all((directory / n).read_bytes() == b for n, b in files.items())
    assert (info.files, info.bytes) == (len(files), sum(map(len, files.values())))

    # The train stage's prepare_base_model finds it complete: no request at all (the
    # objects are gone from the store and it still answers).
    for name in s3_server.list(bucket, "models/tiny/"):
        s3_server.client().delete_object(Bucket=bucket, Key=name)
    from maap_api.storage_access import S3Access
    from maap_trainer.model_prep import prepare_base_model

    cfg = load_trainer_config(config)
    monkey_env = {"MAAP_CACHE_DIR": str(cache)}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in monkey_env.items():
            mp.setenv(key, value)
        assert prepare_base_model(
            cfg.model, cfg.hub, S3Access(endpoint="http://127.0.0.1:1")
        ) == str(directory)


def test_a_prefix_without_a_checkpoint_is_refused(tmp_path: Path, s3_server, bucket) -> None:  # noqa: F811
    uri = f"s3://{bucket}/sets/"
    config = stage_config(
        tmp_path, {"path": "x.jsonl"}, model={"path": uri}, s3={"endpoint": s3_server.endpoint}
    )
    run = run_stage("fetch-model", model_spec(config), tmp_path / "cache", env=keys(s3_server))
    assert run.returncode == 2
    assert run.error_line == (
        f"model.path: {uri}: not a transformers checkpoint: no config.json under the prefix "
        "(found train.jsonl)"
    )
    assert not any((tmp_path / "cache" / "models").glob("*.partial"))
    assert not cached_model_dir(uri, tmp_path / "cache").exists()
