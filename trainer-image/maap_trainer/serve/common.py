"""What every maap model server has: probes, metrics, auth, OpenAI-style errors, shutdown."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Container, Iterator, MutableMapping
from typing import Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from maap_api.field_errors import field_errors
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from maap_trainer.serve.auth import check_bearer
from maap_trainer.serve.metrics import ServerMetrics
from maap_trainer.serve.protocol import APIError, error_body

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/classify")
# A union type adds the branch name (e.g. 'str') to an error's location: not a field.
_UNION_BRANCHES = {"str", "list[str]", "list[TextPart]"}


class RequestMetrics:
    """ASGI middleware: count every API answer by endpoint and status (streams included)."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http" or scope["path"] not in ENDPOINTS:
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"]

        async def counting_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                self.metrics.requests.labels(endpoint, str(status)).inc()
                if status >= 400:
                    self.metrics.errors.labels(endpoint, str(status)).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


def install_error_handlers(
    app: FastAPI, skip: Container[str] = frozenset({"body", *_UNION_BRANCHES})
) -> None:
    """OpenAI-style error bodies for APIError, unknown routes and invalid requests (`skip`:
    location parts that are no field, such as FastAPI's `body`)."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        body = error_body(exc.message, exc.kind, exc.param, exc.code)
        return JSONResponse(body, exc.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = (
            f"no such endpoint: {request.method} {request.url.path}"
            if exc.status_code in (404, 405)
            else str(exc.detail)
        )
        return JSONResponse(error_body(message, "invalid_request_error"), exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            message = f"the request body is not valid JSON: {first.get('ctx', {}).get('error')}"
            return JSONResponse(error_body(message, "invalid_request_error"), 400)
        problems = field_errors(exc.errors(), style="param", skip=skip)
        message = "; ".join(str(p) for p in problems)
        param = problems[0].field or None
        return JSONResponse(error_body(message, "invalid_request_error", param), 400)


def install_common(
    app: FastAPI,
    metrics: ServerMetrics,
    readiness: Callable[[], tuple[str, str | None]],
    auth_token: str | None,
) -> APIRouter:
    """Error handlers, metrics, /healthz, /readyz, /metrics; returns the /v1 router (auth)."""
    app.add_middleware(RequestMetrics, metrics=metrics)

    install_error_handlers(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        status, error = readiness()
        body = {"status": status} if error is None else {"status": status, "error": error}
        return JSONResponse(body, 200 if status == "ready" else 503)

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def authorized(request: Request) -> None:
        if auth_token is None:
            return
        problem = check_bearer(request.headers.get("authorization"), auth_token)
        if problem is not None:
            raise APIError(401, problem, code="invalid_api_key")

    return APIRouter(prefix="/v1", dependencies=[Depends(authorized)])


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the app the moment SIGTERM/SIGINT arrives.

    The app then reports not-ready and refuses new work; uvicorn stops accepting
    connections and waits (up to its graceful timeout) for the running requests, streams
    included, before the app's own shutdown.
    """

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            # uvicorn re-raises the signal once shut down, so SIGTERM would end the process
            # as killed (143); a drained shutdown is a clean exit.
            self._captured_signals.clear()
