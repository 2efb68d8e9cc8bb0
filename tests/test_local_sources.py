"""`maap run` with the cluster's sources: the data set from S3, the models published back,
credentials from the environment, and a wrong key stopping the run before training."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import EXAMPLE_MANIFEST, PIRATE_DATA

pytestmark = pytest.mark.slow


def manifest(tmp_path: Path, s3_server, bucket: str, sha256: str, key: str) -> Path:
    doc = yaml.safe_load(EXAMPLE_MANIFEST.read_text())
    doc["metadata"]["name"] = "pirate-s3"
    doc["spec"]["dataset"] = {"path": f"s3://{bucket}/{key}", "sha256": sha256}
    doc["spec"]["training"].update(maxSteps=2, batchSize=4, loggingSteps=1)
    doc["spec"]["export"] = {"enabled": False}
    doc["spec"]["output"] = {"path": f"s3://{bucket}/published/"}
    doc["spec"]["s3"] = {"endpoint": s3_server.endpoint}
    path = tmp_path / f"{key.replace('/', '-')}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def maap_run(job: Path, out: Path, access: str, secret: str, cache: Path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env = {**clean, "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret,
           "MAAP_CACHE_DIR": str(cache)}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "maap.cli", "run", str(job), "--no-serve", "-o", str(out)],
        capture_output=True, text=True, timeout=1200, env=env,
    )  # fmt: skip


def test_maap_run_reads_s3_and_publishes_to_s3(tmp_path: Path, s3_server, base_model_dir) -> None:
    data = (PIRATE_DATA / "train.jsonl").read_bytes()
    bucket = "local-run"
    s3_server.create_bucket(bucket)
    s3_server.put(bucket, "pirate/train.jsonl", data)
    digest = hashlib.sha256(data).hexdigest()
    job = manifest(tmp_path, s3_server, bucket, digest, "pirate/train.jsonl")
    # The cache holds the converted base model already (base_model_dir): no conversion.
    cache = Path(base_model_dir).parent.parent
    done = maap_run(job, tmp_path / "out", s3_server.access_key, s3_server.secret_key, cache)
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out" / "pirate-s3"
    assert (out / "fetch.json").is_file() and (out / "metrics.json").is_file()
    summary = " ".join(done.stdout.split())
    assert "320 rows" in summary, summary
    published = s3_server.list(bucket, "published/")
    assert "published/merged/config.json" in published, published
    assert "published/adapter/adapter_config.json" in published
    assert f"s3://{bucket}/published/merged/" in summary

    # A wrong secret: one line with the server's 403, no training. (Another object: the
    # first one's verified copy is in the cache, and its sha256 makes a new request moot.)
    s3_server.put(bucket, "pirate/copy.jsonl", data)
    job = manifest(tmp_path, s3_server, bucket, digest, "pirate/copy.jsonl")
    denied = maap_run(job, tmp_path / "denied", s3_server.access_key, "wrong", cache)
    assert denied.returncode != 0
    message = " ".join((denied.stdout + denied.stderr).split())
    assert "403" in message and "SignatureDoesNotMatch" in message, message
    assert "Traceback" not in denied.stdout + denied.stderr
    assert not (tmp_path / "denied" / "pirate-s3" / "metrics.json").exists()
