"""Where training pods report progress: POST /v1/progress/{namespace}/{name}.

The trainer (which never talks to the Kubernetes API) posts its progress report here
with a per-job bearer token; the operator checks the token against the job's Secret and
writes `status.progress`. Pods need no RBAC, and users see step, loss and ETA in
`kubectl get ftj`.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
from typing import Any

from aiohttp import web
from kubernetes import client
from kubernetes.client.rest import ApiException
from maap_api.field_errors import format_validation_error
from maap_api.finetunejob import GROUP, PLURAL, VERSION
from maap_trainer.progress import ProgressReport
from pydantic import ValidationError

from maap.builders import Names

log = logging.getLogger("maap.progress")
TOKEN_KEY = "token"


def status_progress(report: ProgressReport) -> dict[str, Any]:
    """`status.progress` from a report. Every key is present (null when the report has no
    value): the status is merge-patched, and a key left out would keep a stale value, e.g.
    the ETA of the training stage after it ended."""
    out: dict[str, Any] = {"stage": report.stage, "step": report.step}
    out["totalSteps"] = report.total_steps or None
    out["percent"] = report.percent if report.total_steps else None
    for key, value in (
        ("loss", report.loss),
        ("tokensPerSecond", report.tokens_per_second),
        ("etaSeconds", report.eta_seconds),
        ("resumedFromStep", report.resumed_from_step),
    ):
        out[key] = round(value, 4) if isinstance(value, float) else value
    return out


def status_patch(report: ProgressReport) -> dict[str, Any]:
    """The status merge patch of one report: progress; a stage's final report also sets its
    summary (`metrics` once trained, `export` once exported) and the artifacts it published.

    A summary replaces the old one whole (every key, null where the report has none), so
    no figure of an earlier run survives; artifacts merge, since each stage adds its own
    paths beside the operator's `location`."""
    status: dict[str, Any] = {"progress": status_progress(report)}
    if report.metrics is not None:
        status["metrics"] = report.metrics.model_dump(mode="json", by_alias=True)
    if report.export is not None:
        status["export"] = report.export.model_dump(mode="json", by_alias=True)
    if report.artifacts is not None:
        status["artifacts"] = report.artifacts.to_json_dict()
    return {"status": status}


class ProgressReceiver:
    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def _token(self, namespace: str, name: str) -> str | None:
        try:
            secret = self.core.read_namespaced_secret(Names(name).progress_secret, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        raw = (secret.data or {}).get(TOKEN_KEY)
        return base64.b64decode(raw).decode() if raw else None

    def _patch(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, patch
        )

    async def handle(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        expected = await asyncio.to_thread(self._token, namespace, name)
        if expected is None:
            return web.json_response({"error": f"no FineTuneJob {namespace}/{name}"}, status=404)
        if not given or not hmac.compare_digest(given, expected):
            return web.json_response({"error": "invalid progress token"}, status=401)
        try:
            report = ProgressReport.model_validate_json(await request.read())
        except ValidationError as exc:
            return web.json_response({"error": format_validation_error(exc)}, status=400)
        try:
            await asyncio.to_thread(self._patch, namespace, name, status_patch(report))
        except ApiException as exc:
            return web.json_response({"error": exc.reason}, status=exc.status or 502)
        return web.Response(status=204)


async def start_progress_server(api: client.ApiClient, port: int) -> web.AppRunner:
    app = web.Application(client_max_size=64 * 1024)
    receiver = ProgressReceiver(api)
    app.router.add_post("/v1/progress/{namespace}/{name}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    log.info("progress endpoint listening on :%d", port)
    return runner
