"""Signed URLs through which training pods fetch a stored file from the gateway.

In a cluster the fetch stage downloads a job's data over HTTP (and checks its sha256, which
the FineTuneJob pins), so pods need neither the API key nor the gateway's volume. The URL
carries an HMAC of the namespace, the file id and an expiry, made with the gateway's own
secret: it opens exactly one file, for a bounded time.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode

INTERNAL_PREFIX = "/internal/files"
DEFAULT_TTL_SECONDS = 7 * 24 * 3600  # a queued job may wait days for its turn


def _signature(secret: bytes, namespace: str, file_id: str, expires: int) -> str:
    message = f"{namespace}/{file_id}/{expires}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def signed_file_url(
    base_url: str, secret: bytes, namespace: str, file_id: str,
    ttl_seconds: int = DEFAULT_TTL_SECONDS, now: float | None = None,
) -> str:  # fmt: skip
    expires = int((now or time.time()) + ttl_seconds)
    query = urlencode({"expires": expires, "sig": _signature(secret, namespace, file_id, expires)})
    return f"{base_url.rstrip('/')}{INTERNAL_PREFIX}/{namespace}/{file_id}?{query}"


def check_signature(
    secret: bytes, namespace: str, file_id: str, expires: str, sig: str,
    now: float | None = None,
) -> str | None:  # fmt: skip
    """None when the URL is valid, else why not."""
    try:
        deadline = int(expires)
    except ValueError:
        return "expires: not a Unix time"
    if deadline < (now or time.time()):
        return "the link has expired"
    expected = _signature(secret, namespace, file_id, deadline)
    if not hmac.compare_digest(expected, sig):
        return "invalid signature"
    return None
