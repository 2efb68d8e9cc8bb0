"""Webhooks: `fine_tuning.job.succeeded|failed|cancelled`, POSTed to a configured URL.

Signed as OpenAI signs its webhooks (the Standard Webhooks scheme: `webhook-id`,
`webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>`),
so `openai.Client().webhooks.unwrap(body, headers, secret=...)` verifies them. A watcher
polls the backend and sends each job's terminal event once; jobs already finished when
the gateway starts are not announced again.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from typing import Any

import httpx
from maap_api.errors import ConfigError
from starlette.concurrency import run_in_threadpool

from maap.gateway import jobs
from maap.gateway.backend import JobBackend

log = logging.getLogger("maap.gateway.webhooks")
EVENT_TYPES = {s: f"fine_tuning.job.{s}" for s in ("succeeded", "failed", "cancelled")}
ATTEMPTS = 4


def decode_secret(secret: str) -> bytes:
    """`whsec_<base64>` (the form OpenAI hands out) or any other string, as bytes."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except ValueError:
            raise ConfigError("--webhook-secret-env: a whsec_ secret must be base64") from None
    if len(secret) < 16:
        raise ConfigError("--webhook-secret-env: the secret must be at least 16 characters")
    return secret.encode()


def signed_headers(key: bytes, body: str, webhook_id: str, timestamp: int) -> dict[str, str]:
    signed = f"{webhook_id}.{timestamp}.{body}".encode()
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{signature}",
        "content-type": "application/json",
    }


class WebhookSender:
    def __init__(self, url: str, secret: str, client: httpx.AsyncClient | None = None) -> None:
        self.url, self.key = url, decode_secret(secret)
        self.client = client or httpx.AsyncClient(timeout=10.0)
        self.delivered: list[dict[str, Any]] = []

    async def send(self, event_type: str, job_id: str) -> bool:
        webhook_id = "wh_" + secrets.token_hex(12)
        now = int(time.time())
        body = json.dumps({
            "object": "event", "id": webhook_id, "type": event_type, "created_at": now,
            "data": {"id": job_id},
        })  # fmt: skip
        for attempt in range(ATTEMPTS):
            headers = signed_headers(self.key, body, webhook_id, int(time.time()))
            try:
                answer = await self.client.post(self.url, content=body, headers=headers)
                if answer.status_code < 300:
                    self.delivered.append(json.loads(body))
                    return True
                problem = f"HTTP {answer.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            log.warning("webhook %s for %s: %s (attempt %d)", event_type, job_id, problem,
                        attempt + 1)  # fmt: skip
            await asyncio.sleep(2**attempt)
        return False


async def watch_jobs(backend: JobBackend, sender: WebhookSender, interval: float) -> None:
    """Send each job's terminal event once, when the job gets there."""
    seen: dict[tuple[str, str], str] = {}
    first = True
    while True:
        try:
            for namespace in await run_in_threadpool(backend.namespaces):
                for obj in await run_in_threadpool(backend.list, namespace):
                    key = (namespace, obj["metadata"]["name"])
                    state = jobs.openai_status(obj)
                    before = seen.get(key)
                    seen[key] = state
                    if state in EVENT_TYPES and state != before and not (first and before is None):
                        await sender.send(EVENT_TYPES[state], key[1])
        except asyncio.CancelledError:
            raise
        except Exception:  # the backend may be briefly unreachable: keep watching
            log.exception("the webhook watcher could not list jobs")
        first = False
        await asyncio.sleep(interval)
