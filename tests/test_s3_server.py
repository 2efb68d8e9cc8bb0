"""The test S3 server (tests/servers/s3.py) is a real one: it keeps bytes, enforces AWS
Signature V4 with the server's own 403s, answers S3's 404 codes, serves ranges, and takes
the multipart uploads boto3 makes for large model files."""

from __future__ import annotations

import hashlib
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from tests.servers.s3 import S3Server

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture(scope="module")
def bucket(s3: S3Server) -> str:
    s3.create_bucket("maap-test")
    return "maap-test"


def client_error(call: Any, **kwargs: Any) -> tuple[int, str]:
    """(HTTP status, S3 error code) of a call that must fail."""
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    response = info.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def test_put_get_roundtrip(s3: S3Server, bucket: str) -> None:
    data = os.urandom(100_000)
    s3.put(bucket, "models/base/weights.bin", data)
    assert s3.get(bucket, "models/base/weights.bin") == data
    # It is stored, not held in memory: the file under data_dir has the same bytes.
    assert (s3.data_dir / bucket / "models/base/weights.bin").read_bytes() == data


def test_list_with_prefix(s3: S3Server, bucket: str) -> None:
    for key in ("runs/a/adapter.safetensors", "runs/a/sub/config.json", "runs/b/x", "other"):
        s3.put(bucket, key, key.encode())
    assert s3.list(bucket, "runs/a/") == ["runs/a/adapter.safetensors", "runs/a/sub/config.json"]
    assert "other" in s3.list(bucket)
    assert s3.list(bucket, "nothing/") == []


def test_wrong_secret_key_is_refused_with_403(s3: S3Server, bucket: str) -> None:
    s3.put(bucket, "secret.txt", b"x")
    wrong = s3.client(secret_key=s3.secret_key + "x")
    status, code = client_error(wrong.get_object, Bucket=bucket, Key="secret.txt")
    assert (status, code) == (403, "SignatureDoesNotMatch")
    assert client_error(wrong.put_object, Bucket=bucket, Key="new", Body=b"y") == (
        403,
        "SignatureDoesNotMatch",
    )
    assert "new" not in s3.list(bucket)


def test_unknown_access_key_is_refused_with_403(s3: S3Server, bucket: str) -> None:
    stranger = s3.client(access_key="AKNOBODYKNOWSME0000")
    assert client_error(stranger.list_objects_v2, Bucket=bucket) == (403, "InvalidAccessKeyId")
    assert client_error(stranger.list_buckets) == (403, "InvalidAccessKeyId")


def test_unsigned_request_is_refused(s3: S3Server, bucket: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{s3.endpoint}/{bucket}/", timeout=5)
    assert info.value.code == 403


def test_presigned_get_url(s3: S3Server, bucket: str) -> None:
    s3.put(bucket, "shared.txt", b"for a client without keys")
    url = s3.client().generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "shared.txt"}, ExpiresIn=60
    )
    assert "X-Amz-Signature=" in url
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.read() == b"for a client without keys"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url.replace("shared.txt", "other.txt"), timeout=5)
    assert info.value.code == 403  # the signature covers the key


def test_missing_object_is_404_no_such_key(s3: S3Server, bucket: str) -> None:
    assert client_error(s3.client().get_object, Bucket=bucket, Key="absent") == (404, "NoSuchKey")


def test_missing_bucket_is_404_no_such_bucket(s3: S3Server) -> None:
    client = s3.client()
    assert client_error(client.get_object, Bucket="no-such-bucket", Key="k") == (
        404,
        "NoSuchBucket",
    )
    assert client_error(client.list_objects_v2, Bucket="no-such-bucket") == (404, "NoSuchBucket")


def test_ranged_get(s3: S3Server, bucket: str) -> None:
    data = bytes(range(256)) * 64
    s3.put(bucket, "ranged.bin", data)
    got = s3.client().get_object(Bucket=bucket, Key="ranged.bin", Range="bytes=1000-1099")
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["ContentRange"] == f"bytes 1000-1099/{len(data)}"
    assert got["Body"].read() == data[1000:1100]


def test_multipart_upload_file(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    data = os.urandom(12 * MiB)
    source = tmp_path / "model.safetensors"
    source.write_bytes(data)
    client = s3.client()
    parts: list[int] = []

    def count_part(params: dict[str, Any], **_: Any) -> None:
        parts.append(params["PartNumber"])

    client.meta.events.register("before-parameter-build.s3.UploadPart", count_part)
    five_mib_parts = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    client.upload_file(str(source), bucket, "big/model.safetensors", Config=five_mib_parts)

    assert sorted(parts) == [1, 2, 3]  # really multipart: 5 + 5 + 2 MiB
    head = client.head_object(Bucket=bucket, Key="big/model.safetensors")
    assert head["ContentLength"] == len(data)
    back = tmp_path / "back.safetensors"
    client.download_file(bucket, "big/model.safetensors", str(back), Config=five_mib_parts)
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_binds_the_given_host_and_stops_cleanly() -> None:
    # 127.0.0.2 is loopback too on Linux: proves the host parameter is used.
    with S3Server(host="127.0.0.2") as server:
        assert server.endpoint.startswith("http://127.0.0.2:")
        server.create_bucket("other-host")
        server.put("other-host", "k", b"v")
        assert server.get("other-host", "k") == b"v"
        port, data_dir = server.port, server.data_dir
    with pytest.raises(OSError), socket.create_connection(("127.0.0.2", port), timeout=2):
        pass
    assert not data_dir.exists()
