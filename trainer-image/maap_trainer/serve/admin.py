"""/admin/adapters: load and unload LoRA adapters while the model server runs.

Only installed when the server has an admin token (`--admin-token-env`); every request
needs `Authorization: Bearer <admin token>`, and the client token does not do.

- `POST /admin/adapters` `{"name", "path"}`: load an .onnx_adapter; 201 with the model
  object /v1/models then lists. The scheduler thread loads it between two steps and runs
  it once, so a file the runtime refuses, or whose tensors do not fit this base, is a 400.
- `DELETE /admin/adapters/{name}`: no new request may use it (404 from then on); the
  requests already accepted for it finish normally, and its memory is released after the
  last one. `GET` lists it as `unloading` until then.
- `GET /admin/adapters`: the adapters, loaded and unloading.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from maap_trainer.serve.adapters import AdapterRejected, name_problem
from maap_trainer.serve.auth import check_bearer
from maap_trainer.serve.protocol import APIError
from maap_trainer.serve.runtime import NO_LORA_INPUTS
from maap_trainer.serve.scheduler import Draining, GenerationFailed, Scheduler

if TYPE_CHECKING:
    from maap_trainer.serve.server import ServerState


class AdapterLoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    path: str


def install_admin(app: FastAPI, state: ServerState, admin_token: str) -> None:
    base_name = state.settings.model_name
    registry = state.adapters

    async def authorized(request: Request) -> None:
        problem = check_bearer(request.headers.get("authorization"), admin_token)
        if problem is not None:
            raise APIError(401, f"admin API: {problem}", code="invalid_admin_token")

    admin = APIRouter(prefix="/admin", dependencies=[Depends(authorized)])

    @admin.get("/adapters")
    async def list_adapters() -> dict[str, Any]:
        _, scheduler = state.require(while_draining=True)
        for info in registry.retired():
            if not scheduler.adapter_unloading(info.key):
                registry.forget(info)
        data = [a.admin_object("loaded", scheduler.adapter_in_flight(a.key))
                for a in registry.served()]  # fmt: skip
        data += [a.admin_object("unloading", scheduler.adapter_in_flight(a.key))
                 for a in registry.retired()]  # fmt: skip
        return {"object": "list", "data": data}

    @admin.post("/adapters", status_code=201)
    async def load_adapter(body: AdapterLoadRequest) -> JSONResponse:
        runtime, scheduler = state.require()
        if problem := name_problem(body.name, base_name):
            raise APIError(400, f"name: {problem}", "name")
        if registry.taken(body.name):
            message = f"name: an adapter named {body.name!r} is already loaded"
            raise APIError(409, message, "name", code="adapter_exists")
        if not runtime.has_lora_inputs:
            raise APIError(400, f"model: {NO_LORA_INPUTS}", code="model_has_no_lora_inputs")
        path = checked_path(body.path)
        size = path.stat().st_size
        key = registry.new_key(body.name)
        registry.reserve(body.name)
        try:
            loaded = scheduler.load_adapter(key, lambda: runtime.load_adapter(key, path))
            await _wait_or_retire(loaded, scheduler, key)
        except AdapterRejected as exc:
            raise APIError(400, f"path: {path}: {exc}", "path", code="adapter_rejected") from None
        except Draining:
            message = "the server is shutting down"
            raise APIError(503, message, code="server_shutting_down") from None
        except GenerationFailed as exc:
            raise APIError(500, f"the model runtime failed: {exc}") from None
        except Exception as exc:  # the scheduler loop itself goes on
            message = f"loading {path} failed: {type(exc).__name__}: {exc}"
            raise APIError(500, message, code="adapter_load_failed") from None
        finally:
            registry.release(body.name)
        info = registry.add(body.name, path, size, key, "admin")
        return JSONResponse(info.model_object(base_name), 201)

    @admin.delete("/adapters/{name:path}")
    async def unload_adapter(name: str) -> dict[str, Any]:
        _, scheduler = state.require(while_draining=True)
        info = registry.retire(name)
        if info is None:
            served = ", ".join(repr(a.name) for a in registry.served()) or "none"
            message = f"no adapter named {name!r} is loaded (loaded: {served})"
            raise APIError(404, message, "name", code="adapter_not_found")
        in_flight = scheduler.retire_adapter(info.key)
        return {"id": name, "object": "model", "deleted": True, "in_flight": in_flight}

    app.include_router(admin)


def checked_path(value: str) -> Path:
    path = Path(value)
    if not path.is_absolute():
        raise APIError(400, f"path: must be an absolute path on the server (got {value!r})", "path")
    if not path.exists():
        raise APIError(400, f"path: {value} does not exist", "path")
    if not path.is_file():
        raise APIError(400, f"path: {value} is not a file (an .onnx_adapter file is)", "path")
    if not os.access(path, os.R_OK):
        raise APIError(400, f"path: {value} is not readable by the server", "path")
    return path


async def _wait_or_retire(loaded: Future[Any], scheduler: Scheduler, key: str) -> None:
    """Await the load; should this request be cancelled meanwhile, unload what it loaded,
    as nobody will serve it."""
    try:
        await asyncio.shield(asyncio.wrap_future(loaded))
    except asyncio.CancelledError:

        def retire_if_loaded(done: Future[Any]) -> None:
            if done.exception() is None:
                scheduler.retire_adapter(key)

        loaded.add_done_callback(retire_if_loaded)
        raise
