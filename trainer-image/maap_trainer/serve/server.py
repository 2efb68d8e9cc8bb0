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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from maap_api.errors import ConfigError
from starlette.concurrency import run_in_threadpool

from maap_trainer.serve.adapters import AdapterRegistry, AdapterRejected, served_name
from maap_trainer.serve.admin import install_admin
from maap_trainer.serve.chat_prompt import tool_guidance, with_instructions
from maap_trainer.serve.common import install_common
from maap_trainer.serve.metrics import ServerMetrics
from maap_trainer.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
)
from maap_trainer.serve.replies import Answer, Reply
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
from maap_trainer.serve.structured import response_guidance
from maap_trainer.serve.tools import tool_use

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
        use = tool_use(body.tools, body.tool_choice, body.parallel_tool_calls)
        messages = with_instructions(body, use)
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
        guidance = tool_guidance(use) if use else response_guidance(body.response_format)
        options = replace(options, guidance=guidance)
        gens = await submit_choices(scheduler, ids, options, adapter, state, body.n)
        reply = Reply("chat.completion", body.model or settings.model_name, use, body.logprobs)
        if body.stream:
            return stream(reply.chat_chunks(gens, body.include_usage), scheduler, gens,
                          "/v1/chat/completions")  # fmt: skip
        return JSONResponse(reply.chat(await finish(gens, state.metrics)))

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
        gens = await submit_choices(scheduler, ids, options, adapter, state, body.n)
        reply = Reply(
            "text_completion", body.model or settings.model_name, logprobs=body.logprobs is not None
        )
        if body.stream:
            return stream(reply.completion_chunks(gens, body.include_usage), scheduler, gens,
                          "/v1/completions")  # fmt: skip
        return JSONResponse(reply.completion(await finish(gens, state.metrics)))

    app.include_router(api)

    def stream(
        chunks: AsyncIterator[str], scheduler: Scheduler, gens: list[Generation], endpoint: str
    ) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            try:
                async for chunk in chunks:
                    yield chunk
            finally:
                for generation in gens:
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


async def submit_choices(
    scheduler: Scheduler,
    ids: list[int],
    options: SamplingOptions,
    adapter: str | None,
    state: ServerState,
    n: int,
) -> list[Generation]:
    """n generations of one prompt (a seeded request's choices get seeds seed, seed+1, ...,
    so they differ and each is reproducible). A guided request waits for its first
    generation to start: a grammar that cannot be compiled is a 400, not a broken stream."""
    gens: list[Generation] = []
    try:
        for i in range(n):
            seed = None if options.seed is None else (options.seed + i) % 2**32
            gens.append(submit(scheduler, ids, replace(options, seed=seed), adapter, state))
    except APIError:
        for g in gens:
            scheduler.cancel(g)
        raise
    if options.guidance is not None:
        await gens[0].started()
        if (rejected := gens[0].rejected) is not None:
            for g in gens:
                scheduler.cancel(g)
            raise APIError(400, str(rejected), rejected.param)
    return gens


async def finish(gens: list[Generation], metrics: ServerMetrics) -> list[Answer]:
    answers = []
    for generation in gens:
        try:
            text, logprobs = await generation.result()
        except GenerationFailed as exc:
            if generation.rejected is not None:
                raise APIError(400, str(generation.rejected), generation.rejected.param) from None
            raise APIError(500, f"generation failed: {exc}", code="generation_failed") from None
        metrics.observe(generation)
        answers.append(Answer(generation, text, logprobs))
    return answers
