"""A real S3-compatible server for tests: rclone's `serve s3` over a fresh temp directory,
with AWS Signature V4 auth (built by tests/servers/build-s3-server.sh, see versions.env).

    with S3Server() as s3:                       # 127.0.0.1, a free port, fresh keys
        s3.create_bucket("models")
        s3.put("models", "a/b.txt", b"hi")
        s3.client().upload_file(...)             # a boto3 client bound to the server

Buckets are the top-level directories of `data_dir`, objects the files below them. Write
objects through S3 only: rclone caches directory listings for 5 minutes, so a file put
straight into `data_dir` may stay unlisted. (Do not lower --dir-cache-time to 0: rclone then
spins re-arming a zero timer while an upload is open, and requests take minutes.)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from botocore.client import BaseClient
from maap_trainer.ports import free_port

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build-s3-server.sh"
REGION = "us-east-1"
BINARY_NAME = "rclone"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def default_bin_dir() -> Path:
    """The dir the build script builds into; asked from it so the cache key lives in one place."""
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-bin-dir"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def require_binary() -> Path:
    """The server binary; pytest.skip when it was not built (pytest.fail under CI=true)."""
    binary = default_bin_dir() / BINARY_NAME
    if os.access(binary, os.X_OK):
        return binary
    script = BUILD_SCRIPT.relative_to(HERE.parent.parent)
    reason = f"S3 server binary {binary} missing: run `bash {script}`"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the S3 server is required)", pytrace=False)
    pytest.skip(reason)


class S3Server:
    """An S3 server process on `host`:<free port>, stopped (with its children) on exit."""

    def __init__(self, host: str = "127.0.0.1", start_timeout: float = 20.0) -> None:
        self.host = host
        self.port = 0
        self.region = REGION
        # rclone's keys are free-form; these look like AWS's (20 upper-case chars, 40).
        self.access_key = "AK" + secrets.token_hex(9).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        """The directory served: one subdirectory per bucket."""
        if self._tmp is None:
            raise RuntimeError("S3Server is not started (use it as a context manager)")
        return self._tmp / "data"

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        binary = require_binary()
        self._tmp = Path(tempfile.mkdtemp(prefix="maap-s3-"))
        self.data_dir.mkdir()
        try:
            # The port is free when picked but another process may take it before rclone
            # binds: retry a few times on a fresh port.
            for attempt in range(3):
                self.port = free_port(self.host)
                self._proc = self._spawn(binary)
                try:
                    self._wait_ready()
                    return
                except RuntimeError:
                    if attempt == 2 or "address already in use" not in self.log_tail():
                        raise
        except BaseException:
            self.stop()
            raise

    def _spawn(self, binary: Path) -> subprocess.Popen[bytes]:
        assert self._tmp is not None
        # Only our flags: no RCLONE_* settings from the caller's environment.
        env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
        log = (self._tmp / "server.log").open("wb")  # one log per attempt
        try:
            return subprocess.Popen(
                [
                    str(binary), "serve", "s3",
                    "--config", str(self._tmp / "rclone.conf"),  # absent: built-in defaults
                    "--addr", f"{self.host}:{self.port}",
                    "--auth-key", f"{self.access_key},{self.secret_key}",
                    str(self.data_dir),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group, so stop() ends it whole
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        finally:
            log.close()

    def _wait_ready(self) -> None:
        """Until the server answers HTTP at all (an unsigned request gets its 403)."""
        assert self._proc is not None
        deadline = time.monotonic() + self._start_timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"S3 server exited with {self._proc.returncode} on {self.endpoint}:\n"
                    + self.log_tail()
                )
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=1).close()
                return
            except urllib.error.HTTPError:
                return  # any HTTP status means it is serving
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"S3 server on {self.endpoint} did not answer within "
                    f"{self._start_timeout:.0f}s:\n" + self.log_tail()
                )
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        if self._tmp is None or not (self._tmp / "server.log").exists():
            return ""
        text = (self._tmp / "server.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            _kill_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _kill_group(proc, signal.SIGKILL)
                proc.wait(timeout=5)
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    # --- boto3 ---

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> BaseClient:
        """A boto3 S3 client for this server (path-style addressing, SigV4 also for
        presigned URLs; pass other keys to test what the server refuses)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key if access_key is None else access_key,
            aws_secret_access_key=self.secret_key if secret_key is None else secret_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                # boto3 presigns with SigV2 for a custom endpoint, which the server refuses.
                signature_version="s3v4",
                retries={"max_attempts": 1, "mode": "standard"},  # a 403 is the answer
                connect_timeout=5,
                read_timeout=60,
            ),
        )

    def env(self) -> dict[str, str]:
        """AWS_* variables that point an AWS SDK or CLI in a subprocess at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
        }

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def get(self, bucket: str, key: str) -> bytes:
        body: Any = self.client().get_object(Bucket=bucket, Key=key)["Body"]
        return bytes(body.read())

    def list(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under `prefix`, sorted (all pages)."""
        paginator = self.client().get_paginator("list_objects_v2")
        keys: list[str] = []
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(keys)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies without stop() (a
    killed pytest), so no server outlives it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _kill_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
