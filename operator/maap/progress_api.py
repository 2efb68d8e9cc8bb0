"""Where training pods report progress: POST /v1/progress/{namespace}/{name}.

The trainer (which never talks to the Kubernetes API) posts its progress report here
with a per-job bearer token; the operator checks the token against the job's Secret and
writes `status.progress`. Pods need no RBAC, and users see step, loss and ETA in
`kubectl get ftj`.

The training history a report carries (its newest points and checkpoints) never goes
into `status`, which must stay small: it is merged into the job's history ConfigMap
(Names.history_configmap, maap_api.history's document), owned by the FineTuneJob. Each
merge replaces the ConfigMap at the resourceVersion it read and starts again on a
conflict, so concurrent reports lose no point.
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
from maap_api.history import JobHistory, history_configmap_data, parse_history_configmap
from maap_trainer.progress import ProgressReport
from pydantic import ValidationError

from maap.kube import backoff_after_conflict
from maap.objectmeta import JOB_LABEL, Names, object_metadata
from maap.reconcile import parse

log = logging.getLogger("maap.progress")
TOKEN_KEY = "token"
HISTORY_COMPONENT = "history"
# Read-merge-replace rounds before a report's history gives up (each conflict means another
# report's merge went in first; a handful of writers at most share one job's ConfigMap).
HISTORY_ATTEMPTS = 8
MERGE_PATCH = "application/merge-patch+json"


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
        if report.history or report.checkpoints:
            try:
                await asyncio.to_thread(self.record_history, namespace, name, report)
            except (ApiException, HistoryConflict) as exc:
                reason = exc.reason if isinstance(exc, ApiException) else str(exc)
                log.warning("history of %s/%s not recorded: %s", namespace, name, reason)
                status = exc.status if isinstance(exc, ApiException) else 409
                return web.json_response({"error": f"history: {reason}"}, status=status or 502)
        return web.Response(status=204)

    def record_history(self, namespace: str, name: str, report: ProgressReport) -> None:
        """Merge the report's points and checkpoints into the job's history ConfigMap:
        created when missing, else replaced at the resourceVersion read (a 409 means
        another report got in first: read it again and merge once more)."""
        cm_name = Names(name).history_configmap
        for attempt in range(HISTORY_ATTEMPTS):
            if attempt:
                backoff_after_conflict(attempt)
            try:
                current = self.core.read_namespaced_config_map(cm_name, namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                current = None
            stored = parse_history_configmap(current.data if current is not None else None)
            merged = stored.merged(report.history, report.checkpoints)
            try:
                if current is None:
                    body = self._new_history_configmap(namespace, name, merged)
                    if body is None:
                        return  # the FineTuneJob is gone: nothing to keep a history for
                    self.core.create_namespaced_config_map(namespace, body)
                elif merged != stored:
                    patch = {
                        # A precondition: the API server answers 409 if it changed since.
                        "metadata": {"resourceVersion": current.metadata.resource_version},
                        "data": history_configmap_data(merged),
                    }
                    self.core.patch_namespaced_config_map(
                        cm_name, namespace, patch, _content_type=MERGE_PATCH
                    )
                return
            except ApiException as exc:
                if exc.status != 409:  # 409: changed since read, or created meanwhile
                    raise
        raise HistoryConflict(f"{HISTORY_ATTEMPTS} concurrent writes in a row to {cm_name}")

    def _new_history_configmap(
        self, namespace: str, name: str, history: JobHistory
    ) -> dict[str, Any] | None:
        """The ConfigMap, owned by the FineTuneJob (garbage-collected with it) and labelled
        like its other children, but without the job label: the operator's child index would
        otherwise hold a copy of every job's history in memory."""
        try:
            body = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        try:
            job = parse(body)
        except ValidationError as exc:
            log.warning("%s/%s: %s", namespace, name, format_validation_error(exc))
            return None
        cm_name = Names(name).history_configmap
        meta = object_metadata(job, body["metadata"]["uid"], cm_name, HISTORY_COMPONENT)
        meta["labels"].pop(JOB_LABEL, None)
        meta["namespace"] = namespace
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
                "data": history_configmap_data(history)}  # fmt: skip


class HistoryConflict(Exception):
    """Every read-merge-replace round lost the race to another writer."""


async def start_progress_server(api: client.ApiClient, port: int) -> web.AppRunner:
    app = web.Application(client_max_size=64 * 1024)
    receiver = ProgressReceiver(api)
    app.router.add_post("/v1/progress/{namespace}/{name}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    log.info("progress endpoint listening on :%d", port)
    return runner
