"""OpenAI-compatible HTTP server over an exported ONNX model.

Endpoints: /v1/chat/completions and /v1/completions (streaming over SSE and not),
/v1/models, /healthz (the process is up), /readyz (model loaded, not shutting down) and
/metrics (Prometheus); with an admin token, /admin/adapters loads and unloads LoRA adapters
while the server runs (admin.py). Every bad request gets a 4xx with an OpenAI-style error body:
{"error": {"message", "type", "param", "code"}}. On SIGTERM the server stops taking work,
reports not-ready, and lets running generations finish (up to the grace period).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from maap_api.errors import ConfigError
from starlette.concurrency import run_in_threadpool

from maap_trainer.serve.adapters import AdapterRegistry, AdapterRejected, served_name
from maap_trainer.serve.admin import install_admin
from maap_trainer.serve.common import install_common
from maap_trainer.serve.metrics import ServerMetrics
from maap_trainer.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    error_body,
    sse,
    usage,
)
from maap_trainer.serve.request_limits import sampling_options
from maap_trainer.serve.runtime import ModelRuntime
from maap_trainer.serve.scheduler import (
    AdapterUnavailable,
    Draining,
    Generation,
    GenerationFailed,
    QueueFull,
    SamplingOptions,
    Scheduler,
)

log = logging.getLogger("maap.serve")

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclass
class ServerSettings:
    model_dir: Path
    model_name: str
    max_tokens_limit: int = 1024
    max_batch_size: int = 8
    max_queue: int = 64
    max_context_length: int | None = None  # None: runtime.DEFAULT_CONTEXT_LENGTH, or less
    auth_token: str | None = None
    adapters: dict[str, Path] = field(default_factory=dict)  # loaded at startup
    admin_token: str | None = None  # None: no /admin API
    shutdown_grace_seconds: float = 30.0
    threads: int | None = None  # ONNX Runtime intra-op threads; None: the usable CPUs


class ServerState:
    """The model loads in the background so /healthz answers at once, /readyz once loaded."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.metrics = ServerMetrics()
        self.runtime: ModelRuntime | None = None
        self.scheduler: Scheduler | None = None
        self.adapters = AdapterRegistry()
        self.load_error: str | None = None
        self.draining = False

    def load(self) -> None:
        s = self.settings
        started = time.monotonic()
        try:
            runtime = ModelRuntime(s.model_dir, s.max_batch_size, s.threads, s.max_context_length)
            keys = {name: self.adapters.new_key(name) for name in s.adapters}
            for name, path in s.adapters.items():
                try:
                    runtime.load_adapter(keys[name], path)
                except AdapterRejected as exc:
                    raise ConfigError(f"--adapter {name}={path}: {exc}") from None
            scheduler = Scheduler(runtime, s.max_batch_size, s.max_queue, keys.values())
        except ConfigError as exc:
            self.load_error = str(exc)
            log.error("the model failed to load: %s", exc)
            return
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("the model failed to load")
            return
        for name, path in s.adapters.items():
            self.adapters.add(name, path, path.stat().st_size, keys[name], "startup")
        self.metrics.watch(lambda: scheduler.queue_depth, lambda: scheduler.in_flight)
        self.metrics.adapters.set_function(lambda: len(self.adapters.served()))
        self.runtime, self.scheduler = runtime, scheduler
        self.metrics.ready.set(1)
        log.info(
            "model loaded from %s in %.1fs; context %d tokens a request (the model's: %d)",
            s.model_dir, time.monotonic() - started, runtime.context_length,
            runtime.model_context_length,
        )  # fmt: skip

    def require(self, while_draining: bool = False) -> tuple[ModelRuntime, Scheduler]:
        if self.draining and not while_draining:
            raise APIError(503, "the server is shutting down", code="server_shutting_down")
        if self.runtime is None or self.scheduler is None:
            raise APIError(
                503, self.load_error or "the model is still loading", code="model_loading"
            )
        if self.scheduler.broken is not None:
            raise APIError(500, f"the model runtime failed: {self.scheduler.broken}")
        return self.runtime, self.scheduler

    def start_draining(self) -> None:
        if not self.draining:
            log.info("shutting down: no new requests; running generations finish")
        self.draining = True
        self.metrics.ready.set(0)

    def served_names(self) -> list[str]:
        return [self.settings.model_name, *(a.name for a in self.adapters.served())]

    def adapter_for(self, requested: str | None) -> str | None:
        """The runtime key of the adapter a request's `model` names; None for the model."""
        if requested is None or requested == self.settings.model_name:
            return None
        if (adapter := self.adapters.get(requested)) is not None:
            return adapter.key
        raise self.no_such_model(requested)

    def no_such_model(self, requested: str | None) -> APIError:
        served = ", ".join(repr(n) for n in self.served_names())
        return APIError(
            404,
            f"model {requested!r} does not exist; this server serves {served}",
            param="model",
            code="model_not_found",
        )


def create_app(settings: ServerSettings) -> FastAPI:
    state = ServerState(settings)

    def readiness() -> tuple[str, str | None]:
        if state.draining:
            return "draining", None
        if state.load_error is not None:
            return "failed", state.load_error
        if state.scheduler is None:
            return "loading", None
        if state.scheduler.broken is not None:
            return "failed", state.scheduler.broken
        return "ready", None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=state.load, name="model-loader", daemon=True).start()
        yield
        state.start_draining()
        if state.scheduler is not None:
            await run_in_threadpool(state.scheduler.drain, settings.shutdown_grace_seconds)

    app = FastAPI(title="maap model server", lifespan=lifespan)
    app.state.server = state
    api = install_common(app, state.metrics, readiness, settings.auth_token)
    if settings.admin_token is not None:
        install_admin(app, state, settings.admin_token)

    @api.get("/models")
    async def models() -> dict[str, Any]:
        data = [{"id": settings.model_name, "object": "model", "created": 0, "owned_by": "maap"}]
        data += [a.model_object(settings.model_name) for a in state.adapters.served()]
        return {"object": "list", "data": data}

    @api.post("/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest) -> JSONResponse | StreamingResponse:
        runtime, scheduler = state.require()
        adapter = state.adapter_for(body.model)
        messages = [m.as_template_message() for m in body.messages]
        try:
            prompt = runtime.render_chat(messages)
        except Exception as exc:
            message = f"messages: the chat template rejects them: {exc}"
            raise APIError(400, message, "messages") from None
        ids = await run_in_threadpool(runtime.encode, prompt)
        options = sampling_options(
            body, body.requested_max_tokens, len(ids), runtime.context_length,
            settings.max_tokens_limit, "messages", runtime.model_context_length,
        )  # fmt: skip
        generation = submit(scheduler, ids, options, adapter, state)
        reply = Reply("chat.completion", body.model or settings.model_name)
        if body.stream:
            chunks = reply.chat_chunks(generation, body.include_usage)
            return stream(chunks, scheduler, generation, "/v1/chat/completions")
        text = await finish(generation, state.metrics)
        return JSONResponse(reply.chat(text, generation))

    @api.post("/completions", response_model=None)
    async def completions(body: CompletionRequest) -> JSONResponse | StreamingResponse:
        runtime, scheduler = state.require()
        adapter = state.adapter_for(body.model)
        ids = await run_in_threadpool(runtime.encode, body.text)
        if not ids:
            raise APIError(400, "prompt: encodes to no token", "prompt")
        options = sampling_options(
            body, body.max_tokens or DEFAULT_COMPLETION_TOKENS, len(ids),
            runtime.context_length, settings.max_tokens_limit, "prompt",
            runtime.model_context_length,
        )  # fmt: skip
        generation = submit(scheduler, ids, options, adapter, state)
        reply = Reply("text_completion", body.model or settings.model_name)
        if body.stream:
            chunks = reply.completion_chunks(generation, body.include_usage)
            return stream(chunks, scheduler, generation, "/v1/completions")
        text = await finish(generation, state.metrics)
        return JSONResponse(reply.completion(text, generation))

    app.include_router(api)

    def stream(
        chunks: AsyncIterator[str], scheduler: Scheduler, generation: Generation, endpoint: str
    ) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            try:
                async for chunk in chunks:
                    yield chunk
            finally:
                if generation.finished_at is None:
                    scheduler.cancel(generation)  # the client went away
                elif generation.error is not None:
                    state.metrics.errors.labels(endpoint, "stream_failed").inc()
                else:
                    state.metrics.observe(generation)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app


def submit(
    scheduler: Scheduler,
    ids: list[int],
    options: SamplingOptions,
    adapter: str | None,
    state: ServerState,
) -> Generation:
    generation = Generation(ids, options, adapter)
    try:
        scheduler.submit(generation)
    except AdapterUnavailable:  # unloaded between the lookup and now
        raise state.no_such_model(served_name(adapter)) from None
    except QueueFull:
        raise APIError(
            429,
            f"the server is at capacity ({scheduler.capacity} requests running or queued); "
            "retry shortly",
            code="queue_full",
            kind="rate_limit_error",
        ) from None
    except Draining:
        raise APIError(503, "the server is shutting down", code="server_shutting_down") from None
    except GenerationFailed as exc:
        raise APIError(500, f"the model runtime failed: {exc}") from None
    return generation


async def finish(generation: Generation, metrics: ServerMetrics) -> str:
    try:
        text = await generation.text()
    except GenerationFailed as exc:
        raise APIError(500, f"generation failed: {exc}", code="generation_failed") from None
    metrics.observe(generation)
    return text


class Reply:
    """Response bodies and SSE chunks for one request."""

    def __init__(self, kind: str, model: str) -> None:
        prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.kind, self.model, self.created = kind, model, int(time.time())

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }

    def chat(self, text: str, g: Generation) -> dict[str, Any]:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": g.finish_reason,
        }
        return {**self._envelope("chat.completion", [choice]), "usage": _usage(g)}

    def completion(self, text: str, g: Generation) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": g.finish_reason}
        return {**self._envelope("text_completion", [choice]), "usage": _usage(g)}

    async def chat_chunks(self, g: Generation, include_usage: bool) -> AsyncIterator[str]:
        def chunk(delta: dict[str, str], finish: str | None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return self._envelope("chat.completion.chunk", [choice])

        yield sse(chunk({"role": "assistant", "content": ""}, None))
        async for event in _pieces_or_error(g):
            if isinstance(event, dict):
                yield sse(event)
                yield sse("[DONE]")
                return
            yield sse(chunk({"content": event}, None))
        yield sse(chunk({}, g.finish_reason))
        if include_usage:
            yield sse({**self._envelope("chat.completion.chunk", []), "usage": _usage(g)})
        yield sse("[DONE]")

    async def completion_chunks(self, g: Generation, include_usage: bool) -> AsyncIterator[str]:
        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            return self._envelope("text_completion", [choice])

        async for event in _pieces_or_error(g):
            if isinstance(event, dict):
                yield sse(event)
                yield sse("[DONE]")
                return
            yield sse(chunk(event, None))
        yield sse(chunk("", g.finish_reason))
        if include_usage:
            yield sse({**self._envelope("text_completion", []), "usage": _usage(g)})
        yield sse("[DONE]")


async def _pieces_or_error(g: Generation) -> AsyncIterator[str | dict[str, Any]]:
    """Text pieces; a failure after the 200 went out becomes an SSE error event."""
    try:
        async for piece in g.pieces():
            yield piece
    except GenerationFailed as exc:
        yield error_body(f"generation failed: {exc}", "server_error", code="generation_failed")


def _usage(g: Generation) -> dict[str, int]:
    return usage(g.prompt_tokens, g.completion_tokens)
