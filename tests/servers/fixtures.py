"""Pytest fixtures for the servers in this package. Import them into a conftest.py:

from tests.servers.fixtures import s3_server  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.s3 import S3Server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One S3 server on 127.0.0.1 for the whole session; tests use their own buckets.
    Skips (fails under CI=true) when tests/servers/build-s3-server.sh has not built it."""
    with S3Server() as server:
        yield server
