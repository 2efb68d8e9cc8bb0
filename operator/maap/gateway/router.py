"""One inference endpoint: /v1/chat/completions and /v1/completions routed by `model`.

The request goes to the server of that model with `model` rewritten to the name that
server knows; the answer comes back as the server sends it, byte for byte, so a stream
reaches the client chunk by chunk as it is generated (nothing is buffered here).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from maap.gateway.backend import ServedModel
from maap.gateway.errors import APIError
from maap.gateway.jobs import fine_tunable_models, parse_fine_tuned_model

# Generation may take long before the first byte of a non-streamed answer.
UPSTREAM_TIMEOUT = httpx.Timeout(connect=5.0, read=600.0, write=30.0, pool=10.0)


def base_model_objects() -> list[dict[str, Any]]:
    """The fine-tunable base models, as /v1/models lists them."""
    return [
        {"id": name, "object": "model", "created": 0, "owned_by": "maap",
         "maap": {"fineTunable": True}}
        for name in sorted(set(fine_tunable_models().values()))
    ]  # fmt: skip


def model_object(served: ServedModel) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": served.name,
        "object": "model",
        "created": served.created,
        "owned_by": served.owned_by,
    }
    if served.parent:
        body["parent"] = served.parent
    return body


def pick(served: list[ServedModel], requested: Any, namespace: str) -> ServedModel:
    """The served model a request names; 404 (never 403) for another tenant's model."""
    if not isinstance(requested, str) or not requested:
        raise APIError(400, "model: required; name a model from GET /v1/models", "model")
    for model in served:
        if model.name == requested:
            return model
    parsed = parse_fine_tuned_model(requested)
    if parsed is not None and parsed[0] == namespace:
        message = (
            f"model {requested!r} is not serving: its job has not succeeded yet, or its "
            "server is not ready (GET /v1/fine_tuning/jobs/{id} says where it is)"
        )
    elif requested.lower() in fine_tunable_models():
        message = (
            f"model {requested!r} is a base model that is not being served here; it is "
            "served with the first LoRA fine-tune of it"
        )
    else:
        message = f"model {requested!r} does not exist or you do not have access to it"
    raise APIError(404, message, param="model", code="model_not_found")


class Router:
    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self.client = client or httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT)

    async def close(self) -> None:
        await self.client.aclose()

    async def forward(
        self, request: Request, path: str, served: list[ServedModel], namespace: str
    ) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise APIError(400, f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        target = pick(served, body.get("model"), namespace)
        body["model"] = target.upstream_model
        headers = {"Content-Type": "application/json"}
        if target.token:
            headers["Authorization"] = f"Bearer {target.token}"
        upstream = self.client.build_request(
            "POST", f"{target.upstream.rstrip('/')}{path}", json=body, headers=headers
        )
        try:
            answer = await self.client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            raise APIError(
                503,
                f"the server of model {target.name!r} is not reachable: "
                f"{type(exc).__name__}: {exc}",
                code="model_unavailable",
            ) from None
        passed = {
            k: v
            for k, v in answer.headers.items()
            if k.lower() in ("content-type", "cache-control", "x-accel-buffering", "retry-after")
        }
        return StreamingResponse(
            answer.aiter_raw(),
            status_code=answer.status_code,
            headers=passed,
            background=BackgroundTask(answer.aclose),
        )
