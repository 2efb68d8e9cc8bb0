"""OpenAI-style error bodies for every failure the gateway answers with.

The body is the one the model server uses ({"error": {message, type, param, code}}), so a
client sees one error format through the gateway and from a model server behind it.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from maap_api.field_errors import field_errors
from maap_trainer.serve.protocol import APIError, error_body
from starlette.exceptions import HTTPException

__all__ = ["APIError", "install_error_handlers", "not_found"]


def not_found(kind: str, ident: str, param: str | None = None) -> APIError:
    """A 404 that says the same for a missing object and another tenant's object."""
    code = kind.replace(" ", "_").replace("-", "_") + "_not_found"
    return APIError(404, f"no {kind} with id {ident!r}", param=param, code=code)


def install_error_handlers(app: FastAPI) -> None:
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
        problems = field_errors(exc.errors(), style="param", skip={"body", "query", "form"})
        message = "; ".join(str(p) for p in problems)
        param = problems[0].field or None
        return JSONResponse(error_body(message, "invalid_request_error", param), 400)
