"""OpenAI-compatible HTTP server over an exported ONNX model.

Endpoints: /v1/chat/completions (streaming over SSE and not), /v1/models, /healthz
(process is up) and /readyz (model loaded). Every bad request gets a 4xx with an
OpenAI-style error body: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from maap_trainer.errors import ConfigError
from maap_trainer.ports import ensure_port_free
from maap_trainer.serve.engine import Engine, GenerationResult, SamplingOptions

log = logging.getLogger("maap.serve")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=50, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=1)


class APIError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(message: str, kind: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ModelHolder:
    """Loads the engine in the background so /healthz answers at once, /readyz once loaded."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self.engine: Engine | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._load, name="model-loader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _load(self) -> None:
        started = time.monotonic()
        try:
            self.engine = Engine(self.model_dir)
            log.info("model loaded from %s in %.1fs", self.model_dir, time.monotonic() - started)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load")

    def require(self) -> Engine:
        if self.engine is None:
            raise APIError(503, self.error or "the model is still loading", code="model_loading")
        return self.engine


def create_app(model_dir: Path, model_name: str, max_tokens_limit: int = 1024) -> FastAPI:
    holder = ModelHolder(model_dir)
    app = FastAPI(title="maap model server", on_startup=[holder.start])
    app.state.holder = holder

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        return JSONResponse(error_body(exc.message, kind, exc.param, exc.code), exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"] if p != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first['msg']}" if param else first["msg"]
        return JSONResponse(error_body(message, "invalid_request_error", param, None), 400)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if holder.engine is not None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "loading", "error": holder.error}, 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "maap"}],
        }

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest) -> JSONResponse | StreamingResponse:
        engine = holder.require()
        if body.model is not None and body.model != model_name:
            raise APIError(
                404, f"model {body.model!r} does not exist; this server serves {model_name!r}",
                param="model", code="model_not_found",
            )
        options = _sampling(body, max_tokens_limit)
        prompt = engine.render_chat([m.model_dump() for m in body.messages])
        prompt_tokens = await run_in_threadpool(engine.count_tokens, prompt)
        if prompt_tokens + options.max_tokens > engine.context_length:
            raise APIError(
                400,
                f"this model's context is {engine.context_length} tokens; the messages take "
                f"{prompt_tokens} and max_tokens asks for {options.max_tokens}",
                param="messages", code="context_length_exceeded",
            )
        request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        result = GenerationResult(prompt_tokens=prompt_tokens)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _stream_chat(
                engine, prompt, options, result, request_id, created, model_name, include_usage
            )
            return StreamingResponse(events, media_type="text/event-stream")
        text = await run_in_threadpool(lambda: "".join(engine.generate(prompt, options, result)))
        return JSONResponse(
            {
                "id": request_id,
                "object": "chat.completion",
                "created": created,
                "model": model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": result.finish_reason,
                    }
                ],
                "usage": _usage(result),
            }
        )

    return app


def _sampling(body: ChatCompletionRequest, limit: int) -> SamplingOptions:
    max_tokens = body.max_completion_tokens or body.max_tokens or min(256, limit)
    if max_tokens > limit:
        raise APIError(
            400, f"max_tokens: {max_tokens} is above this server's limit of {limit}",
            param="max_tokens", code="max_tokens_too_large",
        )
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4:
        raise APIError(400, "stop: at most 4 stop sequences", param="stop")
    return SamplingOptions(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=stop,
    )


def _usage(result: GenerationResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


async def _stream_chat(
    engine: Engine,
    prompt: str,
    options: SamplingOptions,
    result: GenerationResult,
    request_id: str,
    created: int,
    model_name: str,
    include_usage: bool,
) -> AsyncIterator[str]:
    def chunk(delta: dict[str, str], finish: str | None, usage: Any = None) -> str:
        payload: dict[str, Any] = {
            "id": request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if delta is not None
            else [],
        }
        if usage is not None:
            payload["usage"] = usage
        return f"data: {json.dumps(payload)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, None)
    async for piece in iterate_in_threadpool(engine.generate(prompt, options, result)):
        yield chunk({"content": piece}, None)
    yield chunk({}, result.finish_reason)
    if include_usage:
        yield chunk(None, None, _usage(result))  # type: ignore[arg-type]
    yield "data: [DONE]\n\n"


def serve(
    model_dir: Path,
    host: str = "0.0.0.0",
    port: int = 8000,
    model_name: str | None = None,
    max_tokens_limit: int = 1024,
) -> None:
    import uvicorn

    if not (model_dir / "genai_config.json").is_file():
        raise ConfigError(f"--model-dir: {model_dir} has no exported ONNX model (genai_config.json)")
    ensure_port_free(host, port)
    app = create_app(model_dir, model_name or model_dir.parent.name, max_tokens_limit)
    # uvicorn finishes in-flight requests on SIGTERM before it exits.
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=30)
