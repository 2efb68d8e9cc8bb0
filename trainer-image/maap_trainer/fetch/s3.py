"""S3-compatible stores through boto3: one client per job's `spec.s3`, errors in one line.

Credentials come from the environment (in a pod, the operator fills AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY from spec.s3.secretName); with none set, requests go unsigned (a
public bucket) rather than down boto3's search for credentials (instance metadata, config
files), which in a pod only adds seconds of timeouts before the same anonymous failure.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from maap_api.storage_access import S3Access

from maap_trainer.fetch.errors import FetchError, fetch_error, one_line, unreachable
from maap_trainer.fetch.meter import TransferMeter

CONNECT_TIMEOUT_SECONDS = 10
READ_TIMEOUT_SECONDS = 60
MAX_ATTEMPTS = 3  # boto3's standard retries: throttling, 5xx, broken connections
PART_BYTES = 64 << 20
CHUNK_BYTES = 1 << 20
# Variables with which boto3 finds credentials of its own (IRSA, ECS, a profile).
_AMBIENT_CREDENTIALS = (
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_PROFILE",
)
_HINTS = {
    "SignatureDoesNotMatch": (
        "the secret key is wrong? AWS_SECRET_ACCESS_KEY, from spec.s3.secretName"
    ),
    "InvalidAccessKeyId": "the access key id is wrong? AWS_ACCESS_KEY_ID, from spec.s3.secretName",
    "AccessDenied": "do the credentials of spec.s3.secretName allow it?",
    "AuthorizationHeaderMalformed": "is spec.s3.region right?",
    "PermanentRedirect": "the bucket is in another region: set spec.s3.region",
}
# What a code means, where the server sent no message of its own.
_MEANINGS = {"NoSuchBucket": "no such bucket", "NoSuchKey": "no such object"}


def s3_client(access: S3Access) -> Any:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    key_id = os.environ.get("AWS_ACCESS_KEY_ID")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if bool(key_id) != bool(secret):
        have, lack = (
            ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
            if key_id
            else ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
        )
        raise FetchError(
            f"s3.secretName: {have} is set but {lack} is not; the Secret needs both keys"
        )
    credentials: dict[str, str] = {}
    if key_id and secret:
        credentials = {"aws_access_key_id": key_id, "aws_secret_access_key": secret}
        if token := os.environ.get("AWS_SESSION_TOKEN"):
            credentials["aws_session_token"] = token
    signed = not _anonymous()
    config = Config(
        signature_version="s3v4" if signed else UNSIGNED,
        # Custom endpoints (SeaweedFS, Ceph, rclone, MinIO) rarely serve virtual-host buckets.
        s3={"addressing_style": "path" if access.endpoint else "auto"},
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        # Only what S3 itself requires: many S3-compatible servers reject the newer
        # default CRC checksums on uploads.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        user_agent_extra="maap",
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=access.endpoint,
        region_name=access.region,
        config=config,
        **credentials,
    )


def _anonymous() -> bool:
    """No credentials in the environment, nor a way for boto3 to find some."""
    keys = os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")
    return not keys and not any(os.environ.get(name) for name in _AMBIENT_CREDENTIALS)


def describe(exc: BaseException) -> str | None:
    """The server's status, code and message, with a hint; None for a non-S3 error."""
    from botocore.exceptions import ClientError

    client_error = next((e for e in _chain(exc) if isinstance(e, ClientError)), None)
    if client_error is None:
        return None
    response = client_error.response
    error = response.get("Error", {})
    code = str(error.get("Code", "")) or "error"
    message = one_line(error.get("Message", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    text = f"{status} {code}" if status and str(status) != code else code
    message = message if message and message != code else _MEANINGS.get(code, "")
    if message:
        text += f": {message}"
    if code == "AccessDenied" and _anonymous():
        text += " (no credentials were sent: set spec.s3.secretName, or AWS_ACCESS_KEY_ID and "
        text += "AWS_SECRET_ACCESS_KEY)"
    elif hint := _HINTS.get(code):
        text += f" ({hint})"
    return text


def _chain(exc: BaseException) -> Iterator[BaseException]:
    current: BaseException | None = exc
    while current is not None:
        yield current
        current = current.__cause__ or current.__context__


def s3_failure(field: str, location: str, access: S3Access, exc: BaseException) -> FetchError:
    """Any failure talking to the store, as one FetchError line."""
    from botocore.exceptions import (
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    if isinstance(exc, FetchError):
        return exc
    if text := describe(exc):
        return fetch_error(field, location, text)
    endpoint = access.endpoint or f"https://s3.{access.region}.amazonaws.com"
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        return unreachable(field, location, endpoint, exc)
    if isinstance(exc, ReadTimeoutError):
        return fetch_error(
            field, location, f"read timed out (no data for {READ_TIMEOUT_SECONDS} s)"
        )
    return fetch_error(field, location, f"{type(exc).__name__}: {exc}")


def _failures() -> tuple[type[BaseException], ...]:
    import boto3.exceptions
    import botocore.exceptions
    import urllib3.exceptions

    return (
        botocore.exceptions.BotoCoreError,
        botocore.exceptions.ClientError,
        boto3.exceptions.Boto3Error,
        urllib3.exceptions.HTTPError,
        OSError,
    )


def download_object(
    field: str,
    access: S3Access,
    bucket: str,
    key: str,
    target: Path,
    on_report: Callable[[str], None] | None = None,
) -> int:
    """GET one object into `target`, streaming (a GET, not a HEAD, so errors carry a code)."""
    location = f"s3://{bucket}/{key}"
    try:
        response = s3_client(access).get_object(Bucket=bucket, Key=key)
        meter = TransferMeter(
            f"{field} {location}", response.get("ContentLength"), on_report=on_report
        )
        with target.open("wb") as handle:
            for chunk in response["Body"].iter_chunks(CHUNK_BYTES):
                handle.write(chunk)
                meter.add(len(chunk))
        meter.finish()
    except _failures() as exc:
        raise s3_failure(field, location, access, exc) from None
    return meter.done


def list_prefix(field: str, access: S3Access, bucket: str, prefix: str) -> list[tuple[str, int]]:
    """(key, size) of every object under the prefix, folder markers left out."""
    location = f"s3://{bucket}/{prefix}"
    try:
        pages = (
            s3_client(access)
            .get_paginator("list_objects_v2")
            .paginate(Bucket=bucket, Prefix=prefix)
        )
        return [
            (item["Key"], int(item["Size"]))
            for page in pages
            for item in page.get("Contents", [])
            if not item["Key"].endswith("/")
        ]
    except _failures() as exc:
        raise s3_failure(field, location, access, exc) from None


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES, max_concurrency=8
    )


def download_objects(
    field: str,
    access: S3Access,
    bucket: str,
    objects: list[tuple[str, Path]],
    meter: TransferMeter,
) -> None:
    """Download each (key, local path): ranged, parallel parts for the big files."""
    client, config = s3_client(access), _transfer_config()
    for key, target in objects:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            client.download_file(bucket, key, str(target), Callback=meter.add, Config=config)
        except _failures() as exc:
            raise s3_failure(field, f"s3://{bucket}/{key}", access, exc) from None


def upload_files(
    field: str,
    access: S3Access,
    bucket: str,
    files: list[tuple[Path, str]],
    meter: TransferMeter,
) -> None:
    """Upload each (local path, key): multipart for the big files."""
    client, config = s3_client(access), _transfer_config()
    for source, key in files:
        try:
            client.upload_file(str(source), bucket, key, Callback=meter.add, Config=config)
        except _failures() as exc:
            raise s3_failure(field, f"s3://{bucket}/{key}", access, exc) from None
