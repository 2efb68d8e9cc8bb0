"""One thread drives the model; HTTP handlers submit generations and await their text.

Requests are batched by ONNX Runtime GenAI's `og.Engine`. With a model exported for paged
attention (CUDA, `engine.dynamic_batching` in genai_config.json) that is continuous
batching: a request joins the running batch at the next step. On the CPU the engine batches
statically: the requests waiting when a batch starts run together, and newcomers wait for
the next batch. Either way the wait is bounded: `max_batch_size + max_queue` generations may
be in flight, and the next is refused (the server answers 429).

Two kinds of request cannot go through a static engine: a seeded sampling request (the
engine takes a per-request seed only with dynamic batching) and a request for a LoRA adapter
(engine requests have no adapter switch). Those run on their own `og.Generator`, stepped by
the same thread between engine steps, at most `max_batch_size` at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from maap_trainer.serve.runtime import ModelRuntime
from maap_trainer.serve.textstream import StopMatcher

log = logging.getLogger("maap.serve.scheduler")

# A static batch waits for the rest of a burst before it starts: until no request has
# arrived for ADMISSION_QUIET_SECONDS (what a lone request's time to first token pays), and
# never longer than ADMISSION_MAX_SECONDS in all. Concurrent clients' requests reach the
# queue spread over tens of milliseconds (connection, parsing, tokenizing on shared cores).
ADMISSION_QUIET_SECONDS = 0.015
ADMISSION_MAX_SECONDS = 0.1


class QueueFull(Exception):
    """Every batch slot and queue place is taken."""


class Draining(Exception):
    """The server is shutting down and takes no new work."""


class GenerationFailed(Exception):
    pass


@dataclass(frozen=True)
class SamplingOptions:
    max_tokens: int
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


_DONE = object()


class Generation:
    """One request: its text arrives on an asyncio queue, filled by the scheduler thread."""

    def __init__(
        self, prompt_ids: list[int], options: SamplingOptions, adapter: str | None = None
    ) -> None:
        self.prompt_ids = prompt_ids
        self.options = options
        self.adapter = adapter
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.submitted_at = time.monotonic()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[object] = asyncio.Queue()

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def time_to_first_token(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.submitted_at

    @property
    def decode_tokens_per_second(self) -> float | None:
        """Tokens after the first one over the time they took (the decode rate)."""
        if self.first_token_at is None or self.finished_at is None or self.completion_tokens < 2:
            return None
        seconds = self.finished_at - self.first_token_at
        return (self.completion_tokens - 1) / seconds if seconds > 0 else None

    def push(self, item: object) -> None:
        """From the scheduler thread."""
        # RuntimeError: the event loop is gone, so nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def pieces(self) -> AsyncIterator[str]:
        while True:
            item = await self._queue.get()
            if item is _DONE:
                if self.error is not None:
                    raise GenerationFailed(self.error)
                return
            assert isinstance(item, str)
            yield item

    async def text(self) -> str:
        return "".join([piece async for piece in self.pieces()])


class _Decoder:
    """Tokens to text for one generation: end of sequence, stop sequences, max_tokens."""

    def __init__(self, generation: Generation, runtime: ModelRuntime, on_finish: Any) -> None:
        self.generation = generation
        self.stream = runtime.create_stream()
        self.matcher = StopMatcher(generation.options.stop)
        self.eos = runtime.eos_token_ids
        self.done = False
        self._on_finish = on_finish

    def on_token(self, token: int) -> bool:
        """Take one generated token; True once the generation is finished."""
        g = self.generation
        if g.first_token_at is None:
            g.first_token_at = time.monotonic()
        if token in self.eos:
            return self.finish("stop")
        g.completion_tokens += 1
        text = self.matcher.feed(self.stream.decode(token))
        if text:
            g.push(text)
        if self.matcher.stopped:
            return self.finish("stop")
        if g.completion_tokens >= g.options.max_tokens:
            return self.finish("length")
        return False

    def finish(self, reason: str, error: str | None = None) -> bool:
        if self.done:
            return True
        self.done = True
        g = self.generation
        tail = self.matcher.flush()
        if tail and error is None:
            g.push(tail)
        g.finish_reason, g.error, g.finished_at = reason, error, time.monotonic()
        g.push(_DONE)
        self._on_finish(g)
        return True


@dataclass
class _EngineSlot:
    request: Any
    turn: int
    decoder: _Decoder


@dataclass
class _GeneratorSlot:
    generator: Any
    decoder: _Decoder


class Scheduler:
    def __init__(self, runtime: ModelRuntime, max_batch_size: int, max_queue: int) -> None:
        og = runtime.og
        self.runtime = runtime
        self.max_batch_size = max_batch_size
        self.capacity = max_batch_size + max_queue
        self._og = og
        self._engine: Any = None
        self._buffer: Any = None
        self._finished_reasons = {
            og.FinishReason.EOS: "stop",
            og.FinishReason.STOP_STRING: "stop",
            og.FinishReason.MAX_GENERATED_TOKENS: "length",
            og.FinishReason.MAX_SESSION_TOKENS: "length",
            og.FinishReason.CANCELLED: "cancelled",
        }
        self._lock = threading.Condition()
        self._incoming: deque[Generation] = deque()
        self._cancelled: deque[Generation] = deque()
        self._inflight: set[Generation] = set()
        self._draining = False
        self._stopping = False
        self.broken: str | None = None
        # Owned by the scheduler thread.
        self._engine_slots: dict[Any, _EngineSlot] = {}
        self._generator_slots: dict[Generation, _GeneratorSlot] = {}
        self._generator_waiting: deque[Generation] = deque()
        # og.Engine may only be used from the thread that made it: the scheduler's own.
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="maap-scheduler", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    # -- called from the HTTP side ------------------------------------------------------

    def submit(self, generation: Generation) -> None:
        with self._lock:
            if self.broken is not None:
                raise GenerationFailed(self.broken)
            if self._draining:
                raise Draining
            if len(self._inflight) >= self.capacity:
                raise QueueFull
            self._inflight.add(generation)
            self._incoming.append(generation)
            self._lock.notify_all()

    def cancel(self, generation: Generation) -> None:
        """The client went away: stop spending compute on it."""
        with self._lock:
            if generation in self._inflight:
                self._cancelled.append(generation)
                self._lock.notify_all()

    @property
    def queue_depth(self) -> int:
        """Generations waiting for their first token (queued, or in prefill)."""
        with self._lock:
            return sum(1 for g in self._inflight if g.first_token_at is None)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._inflight)

    def drain(self, timeout: float) -> bool:
        """Refuse new work, let what runs finish (up to timeout), stop the thread."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._draining = True
            while self._inflight and (left := deadline - time.monotonic()) > 0:
                self._lock.wait(left)
            finished = not self._inflight
            self._stopping = True
            self._lock.notify_all()
        self._thread.join(timeout=max(1.0, deadline - time.monotonic()))
        return finished

    # -- the scheduler thread -----------------------------------------------------------

    def _busy(self) -> bool:
        return bool(self._engine_slots or self._generator_slots or self._generator_waiting)

    def _run(self) -> None:
        try:
            self._engine = self._og.Engine(self.runtime.model)
            self._buffer = self._engine.create_event_buffer(max(64, 8 * self.max_batch_size))
        except Exception as exc:
            self._start_error = exc
            return
        finally:
            self._started.set()
        try:
            while True:
                with self._lock:
                    while not (self._incoming or self._cancelled or self._busy() or self._stopping):
                        self._lock.wait()
                    if self._stopping and not self._busy() and not self._incoming:
                        return
                    self._gather_burst()
                    incoming = list(self._incoming)
                    self._incoming.clear()
                    cancelled = list(self._cancelled)
                    self._cancelled.clear()
                for generation in incoming:
                    if generation in cancelled:  # gone before it started
                        _Decoder(generation, self.runtime, self._finished).finish("cancelled")
                    else:
                        self._start(generation)
                for generation in cancelled:
                    if generation.finished_at is None:
                        self._cancel(generation)
                self._step_engine()
                self._step_generators()
        except Exception as exc:  # a broken runtime: fail everything, refuse new work
            log.exception("the generation loop failed")
            self._fail_all(f"{type(exc).__name__}: {exc}")

    def _gather_burst(self) -> None:
        """With the lock held: when a static batch is about to start, wait for the burst.

        The first request of a burst would otherwise start a batch alone, and the rest would
        wait for it to finish: on a static engine a batch admits no newcomer.
        """
        if self.runtime.dynamic_batching or self._engine_slots or not self._incoming:
            return
        started = time.monotonic()
        seen, last_arrival = len(self._incoming), started
        while len(self._incoming) < self.max_batch_size and not self._stopping:
            now = time.monotonic()
            if len(self._incoming) != seen:
                seen, last_arrival = len(self._incoming), now
            left = min(last_arrival + ADMISSION_QUIET_SECONDS, started + ADMISSION_MAX_SECONDS)
            if left - now <= 0:
                return
            self._lock.wait(left - now)

    def _finished(self, generation: Generation) -> None:
        with self._lock:
            self._inflight.discard(generation)
            self._lock.notify_all()

    def _needs_generator(self, generation: Generation) -> bool:
        if generation.adapter is not None:
            return True
        options = generation.options
        return options.seed is not None and not options.greedy and not self.runtime.dynamic_batching

    def _start(self, generation: Generation) -> None:
        decoder = _Decoder(generation, self.runtime, self._finished)
        try:
            if self._needs_generator(generation):
                if len(self._generator_slots) < self.max_batch_size:
                    self._generator_slots[generation] = self._new_generator(decoder)
                else:
                    self._generator_waiting.append(generation)
                return
            request, turn = self._begin_turn(generation)
        except Exception as exc:
            decoder.finish("error", f"{type(exc).__name__}: {exc}")
            return
        self._engine_slots[request] = _EngineSlot(request, turn, decoder)

    def _begin_turn(self, generation: Generation) -> tuple[Any, int]:
        og, options = self._og, generation.options
        request = self._engine.create_request()
        turn_options = og.TurnOptions(request)
        turn_options.set_max_generated_tokens(options.max_tokens)
        if options.min_tokens:
            turn_options.set_min_generated_tokens(options.min_tokens)
        turn_options.set_do_sample(not options.greedy)
        if not options.greedy:
            turn_options.set_temperature(options.temperature)
            turn_options.set_top_p(options.top_p)
            turn_options.set_top_k(options.top_k)
            if options.seed is not None:
                turn_options.set_seed(options.seed)
        import numpy as np

        turn = request.begin_turn(np.asarray(generation.prompt_ids, dtype=np.int32), turn_options)
        return request, turn

    def _new_generator(self, decoder: _Decoder) -> _GeneratorSlot:
        import numpy as np

        og, generation = self._og, decoder.generation
        options = generation.options
        search: dict[str, Any] = {
            "max_length": min(
                self.runtime.context_length, generation.prompt_tokens + options.max_tokens
            ),
            "do_sample": not options.greedy,
        }
        if options.min_tokens:
            search["min_length"] = generation.prompt_tokens + options.min_tokens
        if not options.greedy:
            search.update(temperature=options.temperature, top_p=options.top_p, top_k=options.top_k)
            if options.seed is not None:
                search["random_seed"] = options.seed
        params = og.GeneratorParams(self.runtime.model)
        params.set_search_options(**search)
        generator = og.Generator(self.runtime.model, params)
        if generation.adapter is not None:
            generator.set_active_adapter(self.runtime.adapters, generation.adapter)
        generator.append_tokens(np.asarray(generation.prompt_ids, dtype=np.int32))
        return _GeneratorSlot(generator, decoder)

    def _cancel(self, generation: Generation) -> None:
        for slot in self._engine_slots.values():
            if slot.decoder.generation is generation:
                self._cancel_turn(slot)
                slot.decoder.finish("cancelled")
                return
        gslot = self._generator_slots.pop(generation, None)
        if gslot is not None:
            gslot.decoder.finish("cancelled")
        elif generation in self._generator_waiting:
            self._generator_waiting.remove(generation)
            _Decoder(generation, self.runtime, self._finished).finish("cancelled")

    def _cancel_turn(self, slot: _EngineSlot) -> None:
        # RuntimeError: the turn already ended; its TURN_FINISHED event is on its way.
        with contextlib.suppress(RuntimeError):
            slot.request.cancel_turn(slot.turn)

    def _step_engine(self) -> None:
        if not self._engine_slots:
            return
        flags = self._og.EngineEventFlags
        if not self._engine.has_pending_requests():
            # Every turn ended without telling us how: nothing more will come for them.
            for slot in self._engine_slots.values():
                slot.decoder.finish("error", "the engine dropped the request")
                slot.request.close()
            self._engine_slots.clear()
            return
        for event in self._engine.run(self._buffer):
            slot = self._engine_slots.get(event.request)
            if slot is None:
                continue
            if event.flags & flags.FAILED:
                slot.decoder.finish("error", f"generation failed ({event.error_code.name})")
            if event.flags & flags.TOKEN and not slot.decoder.done:
                finished_here = slot.decoder.on_token(int(event.token))
                if finished_here and not event.flags & flags.TURN_FINISHED:
                    self._cancel_turn(slot)
            if event.flags & flags.TURN_FINISHED:
                reason = self._finished_reasons.get(event.finish_reason, "stop")
                slot.decoder.finish(reason)
                del self._engine_slots[event.request]
                slot.request.close()

    def _step_generators(self) -> None:
        for generation, slot in list(self._generator_slots.items()):
            generator = slot.generator
            if generator.is_done():
                # An end-of-sequence token finishes in on_token; done here means max_length.
                slot.decoder.finish("length")
            else:
                generator.generate_next_token()
                slot.decoder.on_token(int(generator.get_next_tokens()[0]))
            if slot.decoder.done:
                del self._generator_slots[generation]
        while self._generator_waiting and len(self._generator_slots) < self.max_batch_size:
            generation = self._generator_waiting.popleft()
            decoder = _Decoder(generation, self.runtime, self._finished)
            try:
                self._generator_slots[generation] = self._new_generator(decoder)
            except Exception as exc:
                decoder.finish("error", f"{type(exc).__name__}: {exc}")

    def _fail_all(self, message: str) -> None:
        with self._lock:
            self.broken = message
            pending = list(self._inflight)
        for generation in pending:
            if generation.finished_at is None:
                _Decoder(generation, self.runtime, self._finished).finish("error", message)
