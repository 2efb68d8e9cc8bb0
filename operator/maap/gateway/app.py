"""The gateway's HTTP API: OpenAI files, fine-tuning jobs, events, checkpoints, models and
inference, over a job backend (the cluster or this machine).

Routes stay thin: check the tenant, call the pure mapping (jobs, job_events) and the
backend, answer. Every failure is an OpenAI-style error body.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from maap.gateway import jobs
from maap.gateway.backend import JobBackend
from maap.gateway.console import mount_console
from maap.gateway.errors import APIError, install_error_handlers, not_found
from maap.gateway.file_urls import INTERNAL_PREFIX, check_signature
from maap.gateway.files import FileStore
from maap.gateway.job_events import job_checkpoints, job_events, page
from maap.gateway.requests import CreateFineTuningJob
from maap.gateway.router import Router, base_model_objects, model_object
from maap.gateway.tenancy import KeyRing, tenant_of
from maap.gateway.webhooks import WebhookSender, watch_jobs


async def _tenant(request: Request) -> str:
    return tenant_of(request.headers.get("authorization"), request.app.state.keys)


# The namespace of the request's API key (module level: FastAPI resolves it by name).
Tenant = Annotated[str, Depends(_tenant)]


@dataclass
class GatewaySettings:
    file_secret: bytes
    webhooks: WebhookSender | None = None
    watch_interval_seconds: float = 2.0
    # Start the backend's work (the local worker) with the app, and stop it (and the model
    # servers it started) when the app shuts down.
    run_backend: bool = True
    # Called with each job's object once, when it first becomes terminal (tests, logs).
    on_terminal: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)
    # Serve the web console at /console.
    console: bool = True


def create_app(
    backend: JobBackend, keys: KeyRing, files: FileStore, settings: GatewaySettings
) -> FastAPI:
    router = Router()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Here, not around uvicorn.run: uvicorn re-raises SIGTERM once shut down, so code
        # after it never runs, and the model servers the backend started would outlive it.
        start, close = getattr(backend, "start", None), getattr(backend, "close", None)
        if settings.run_backend and start is not None:
            await run_in_threadpool(start)
        watcher = None
        if settings.webhooks is not None:
            watcher = asyncio.create_task(
                watch_jobs(backend, settings.webhooks, settings.watch_interval_seconds)
            )
        yield
        if watcher is not None:
            watcher.cancel()
        await router.close()
        if settings.run_backend and close is not None:
            await run_in_threadpool(close)

    app = FastAPI(title="maap gateway", lifespan=lifespan)
    app.state.backend = backend
    app.state.keys = keys
    install_error_handlers(app)

    api = APIRouter(prefix="/v1")

    async def call(fn: Callable[..., Any], *args: Any) -> Any:
        return await run_in_threadpool(fn, *args)

    async def job_or_404(namespace: str, job_id: str) -> dict[str, Any]:
        obj = await call(backend.get, namespace, job_id)
        if obj is None:
            raise not_found("fine-tuning job", job_id, "fine_tuning_job_id")
        return obj

    # -- files --------------------------------------------------------------------------

    @api.post("/files")
    async def upload(
        namespace: Tenant,
        file: Annotated[UploadFile, File()],
        purpose: Annotated[str, Form()],
    ) -> dict[str, Any]:
        name = file.filename or "upload.jsonl"
        stored = await call(files.add, namespace, name, purpose, file.file)
        return stored.openai()

    @api.get("/files")
    async def list_files(
        namespace: Tenant,
        purpose: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
        after: str | None = None,
        order: str = "desc",
    ) -> dict[str, Any]:
        if order not in ("asc", "desc"):
            raise APIError(400, f"order: must be asc or desc, got {order!r}", "order")
        found = [f.openai() for f in await call(files.list, namespace)]
        found = [f for f in found if purpose is None or f["purpose"] == purpose]
        if order == "asc":
            found.reverse()
        return page(found, after, limit)

    @api.get("/files/{file_id}")
    async def get_file(namespace: Tenant, file_id: str) -> dict[str, Any]:
        return (await call(files.get, namespace, file_id)).openai()

    @api.get("/files/{file_id}/content")
    async def file_content(namespace: Tenant, file_id: str) -> StreamingResponse:
        await call(files.get, namespace, file_id)
        return StreamingResponse(files.chunks(namespace, file_id), media_type="application/jsonl")

    @api.delete("/files/{file_id}")
    async def delete_file(namespace: Tenant, file_id: str) -> dict[str, Any]:
        await call(files.get, namespace, file_id)
        for obj in await call(backend.list, namespace):
            notes = obj["metadata"].get("annotations") or {}
            uses = file_id in (notes.get(jobs.TRAINING_FILE), notes.get(jobs.VALIDATION_FILE))
            if uses and jobs.openai_status(obj) not in jobs.TERMINAL:
                raise APIError(
                    409,
                    f"file {file_id} is used by fine-tuning job {obj['metadata']['name']}, "
                    "which has not finished; cancel it or wait for it first",
                    param="file_id",
                    code="file_in_use",
                )
        await call(files.delete, namespace, file_id)
        return {"object": "file", "id": file_id, "deleted": True}

    # -- fine-tuning jobs ---------------------------------------------------------------

    def data_location(namespace: str, file_id: str, param: str) -> jobs.DataLocation:
        try:
            stored = files.get(namespace, file_id)
        except APIError:
            raise APIError(
                400, f"{param}: no file with id {file_id!r}", param=param, code="invalid_file_id"
            ) from None
        return backend.data_location(namespace, stored.id, stored.sha256)

    @api.post("/fine_tuning/jobs")
    async def create_job(namespace: Tenant, body: CreateFineTuningJob) -> dict[str, Any]:
        training = await call(data_location, namespace, body.training_file, "training_file")
        validation = None
        if body.validation_file:
            validation = await call(
                data_location, namespace, body.validation_file, "validation_file"
            )
        manifest = jobs.build_finetunejob(body, jobs.new_job_id(), namespace, training, validation)
        return jobs.openai_job(await call(backend.create, namespace, manifest))

    @api.get("/fine_tuning/jobs")
    async def list_jobs(
        request: Request,
        namespace: Tenant,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    ) -> dict[str, Any]:
        wanted = _metadata_filter(request)
        objects = sorted(await call(backend.list, namespace), key=jobs.created_order)
        found = [jobs.openai_job(o) for o in reversed(objects)]
        found = [j for j in found if _matches(j.get("metadata"), wanted)]
        listed = page(found, after, limit)
        return {"object": "list", "data": listed["data"], "has_more": listed["has_more"]}

    @api.get("/fine_tuning/jobs/{job_id}")
    async def get_job(namespace: Tenant, job_id: str) -> dict[str, Any]:
        return jobs.openai_job(await job_or_404(namespace, job_id))

    @api.post("/fine_tuning/jobs/{job_id}/cancel")
    async def cancel_job(namespace: Tenant, job_id: str) -> dict[str, Any]:
        obj = await job_or_404(namespace, job_id)
        _require_state(obj, {"validating_files", "queued", "running", "paused"}, "cancel")
        return jobs.openai_job(await call(backend.cancel, namespace, job_id))

    @api.post("/fine_tuning/jobs/{job_id}/pause")
    async def pause_job(namespace: Tenant, job_id: str) -> dict[str, Any]:
        obj = await job_or_404(namespace, job_id)
        _require_state(obj, {"validating_files", "queued", "running"}, "pause")
        return jobs.openai_job(await call(backend.set_suspend, namespace, job_id, True))

    @api.post("/fine_tuning/jobs/{job_id}/resume")
    async def resume_job(namespace: Tenant, job_id: str) -> dict[str, Any]:
        obj = await job_or_404(namespace, job_id)
        _require_state(obj, {"paused"}, "resume")
        return jobs.openai_job(await call(backend.set_suspend, namespace, job_id, False))

    @api.get("/fine_tuning/jobs/{job_id}/events")
    async def list_events(
        namespace: Tenant,
        job_id: str,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    ) -> dict[str, Any]:
        await job_or_404(namespace, job_id)
        happened = await call(backend.events, namespace, job_id)
        history = await call(backend.history, namespace, job_id)
        listed = page(job_events(job_id, happened, history), after, limit)
        return {"object": "list", "data": listed["data"], "has_more": listed["has_more"]}

    @api.get("/fine_tuning/jobs/{job_id}/checkpoints")
    async def list_checkpoints(
        namespace: Tenant,
        job_id: str,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    ) -> dict[str, Any]:
        obj = await job_or_404(namespace, job_id)
        history = await call(backend.history, namespace, job_id)
        name = jobs.fine_tuned_model_name(obj)
        return page(job_checkpoints(obj, name, history), after, limit)

    @api.get("/fine_tuning/jobs/{job_id}/history")
    async def job_history(namespace: Tenant, job_id: str) -> dict[str, Any]:
        """maap's own: every logged point (train and eval loss per step) and checkpoint,
        oldest first, for the console's curves (events carry the same, newest first and
        paged)."""
        await job_or_404(namespace, job_id)
        history = await call(backend.history, namespace, job_id)
        return jobs.history_object(job_id, history)

    # -- models and inference -----------------------------------------------------------

    @api.get("/models")
    async def list_models(namespace: Tenant) -> dict[str, Any]:
        served = await call(backend.served_models, namespace)
        listed = {m["id"]: m for m in base_model_objects()}
        listed.update({m.name: model_object(m) for m in served})
        return {"object": "list", "data": list(listed.values())}

    @api.get("/models/{model:path}")
    async def get_model(namespace: Tenant, model: str) -> dict[str, Any]:
        for item in (await list_models(namespace))["data"]:
            if item["id"] == model:
                return item
        raise APIError(
            404, f"model {model!r} does not exist or you do not have access to it",
            param="model", code="model_not_found",
        )  # fmt: skip

    @api.post("/chat/completions")
    async def chat(request: Request, namespace: Tenant) -> Response:
        served = await call(backend.served_models, namespace)
        return await router.forward(request, "/v1/chat/completions", served, namespace)

    @api.post("/completions")
    async def completions(request: Request, namespace: Tenant) -> Response:
        served = await call(backend.served_models, namespace)
        return await router.forward(request, "/v1/completions", served, namespace)

    app.include_router(api)
    if settings.console:
        mount_console(app)

    # -- for the cluster's pods: a stored file by signed URL ----------------------------

    @app.get(INTERNAL_PREFIX + "/{namespace}/{file_id}")
    async def internal_file(
        namespace: str, file_id: str, expires: str = "", sig: str = ""
    ) -> StreamingResponse:
        problem = check_signature(settings.file_secret, namespace, file_id, expires, sig)
        if problem is not None:
            raise APIError(403, f"file link: {problem}", code="invalid_signature")
        await call(files.get, namespace, file_id)
        return StreamingResponse(files.chunks(namespace, file_id), media_type="application/jsonl")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        return JSONResponse({"status": "ready", "time": int(time.time())})

    return app


def _require_state(obj: dict[str, Any], allowed: set[str], action: str) -> None:
    state = jobs.openai_status(obj)
    if state not in allowed:
        raise APIError(
            400,
            f"fine-tuning job {obj['metadata']['name']} is {state}; only a job that is "
            f"{' or '.join(sorted(allowed))} can be told to {action}",
            param="fine_tuning_job_id",
            code="invalid_job_state",
        )


def _metadata_filter(request: Request) -> dict[str, str]:
    """OpenAI's `metadata[key]=value` query parameters."""
    wanted = {}
    for key, value in request.query_params.multi_items():
        if key.startswith("metadata[") and key.endswith("]"):
            wanted[key[len("metadata[") : -1]] = value
    return wanted


def _matches(metadata: dict[str, str] | None, wanted: dict[str, str]) -> bool:
    return all((metadata or {}).get(k) == v for k, v in wanted.items())
