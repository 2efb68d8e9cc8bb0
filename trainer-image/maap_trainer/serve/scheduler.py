"""One thread drives the model; HTTP handlers submit generations and await their text.

Requests are batched by ONNX Runtime GenAI's `og.Engine`. With a model exported for paged
attention (CUDA, `engine.dynamic_batching` in genai_config.json) that is continuous
batching: a request joins the running batch at the next step. On the CPU the engine batches
statically: the requests waiting when a batch starts run together, and newcomers wait for
the next batch. Either way the wait is bounded: `max_batch_size + max_queue` generations may
be in flight, and the next is refused (the server answers 429).

Three kinds of request cannot go through a static engine: a seeded sampling request (the
engine takes a per-request seed only with dynamic batching), a request for a LoRA adapter
(engine requests have no adapter switch) and one for log probabilities (engine events carry
no logits). Those run on their own `og.Generator`, stepped by the same thread between
engine steps, at most `max_batch_size` at a time. Grammars (structured outputs, tool
calls) and the repetition penalty work on both.

Adapters are loaded and unloaded by that thread too, between steps (`run_in_loop`), so a
change never races a running step. An adapter taken out of service (`retire_adapter`)
serves no new request at once; the generations already accepted for it finish, and its
memory is released once the last one has (ONNX Runtime refuses to unload an adapter a
generator still holds).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from maap_trainer.serve.engine_requests import begin_turn, new_generator
from maap_trainer.serve.generation import (
    AdapterUnavailable,
    Decoder,
    Draining,
    Generation,
    GenerationFailed,
    GuidanceRejected,
    QueueFull,
    SamplingOptions,
)
from maap_trainer.serve.logprobs import step_logprobs
from maap_trainer.serve.runtime import ModelRuntime

__all__ = [
    "AdapterUnavailable",
    "Draining",
    "Generation",
    "GenerationFailed",
    "QueueFull",
    "SamplingOptions",
    "Scheduler",
]

log = logging.getLogger("maap.serve.scheduler")

# A static batch waits for the rest of a burst before it starts: until no request has
# arrived for ADMISSION_QUIET_SECONDS (what a lone request's time to first token pays), and
# never longer than ADMISSION_MAX_SECONDS in all. Concurrent clients' requests reach the
# queue spread over tens of milliseconds (connection, parsing, tokenizing on shared cores).
ADMISSION_QUIET_SECONDS = 0.015
ADMISSION_MAX_SECONDS = 0.1


@dataclass
class _EngineSlot:
    request: Any
    turn: int
    decoder: Decoder


@dataclass
class _GeneratorSlot:
    generator: Any
    decoder: Decoder


class Scheduler:
    def __init__(
        self,
        runtime: ModelRuntime,
        max_batch_size: int,
        max_queue: int,
        adapter_keys: Iterable[str] = (),
    ) -> None:
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
        # Adapters requests may name, and those waiting for their last generation to end.
        self._adapter_keys: set[str] = set(adapter_keys)
        self._retired_adapters: set[str] = set()
        self._reap_due = False
        self._loop_tasks: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
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
            if generation.adapter is not None and generation.adapter not in self._adapter_keys:
                raise AdapterUnavailable(generation.adapter)
            self._inflight.add(generation)
            self._incoming.append(generation)
            self._lock.notify_all()

    def cancel(self, generation: Generation) -> None:
        """The client went away: stop spending compute on it."""
        with self._lock:
            if generation in self._inflight:
                self._cancelled.append(generation)
                self._lock.notify_all()

    def run_in_loop(self, task: Callable[[], Any]) -> Future[Any]:
        """Run task on the scheduler thread between two steps; its result or exception."""
        future: Future[Any] = Future()
        with self._lock:
            if self.broken is not None:
                raise GenerationFailed(self.broken)
            if self._stopping:
                raise Draining
            self._loop_tasks.append((task, future))
            self._lock.notify_all()
        return future

    def load_adapter(self, key: str, load: Callable[[], None]) -> Future[Any]:
        """Load an adapter on the scheduler thread (`load` does it); then requests may use key."""

        def load_and_enable() -> None:
            load()
            with self._lock:
                self._adapter_keys.add(key)

        return self.run_in_loop(load_and_enable)

    def retire_adapter(self, key: str) -> int:
        """No new request may use key; it is unloaded once the accepted ones finish.

        Returns how many accepted generations still use it.
        """
        with self._lock:
            self._adapter_keys.discard(key)
            self._retired_adapters.add(key)
            self._reap_due = True
            self._lock.notify_all()
            return sum(1 for g in self._inflight if g.adapter == key)

    def adapter_in_flight(self, key: str) -> int:
        with self._lock:
            return sum(1 for g in self._inflight if g.adapter == key)

    def adapter_unloading(self, key: str) -> bool:
        """Retired, and still held by a generation (or its unload failed and waits a retry)."""
        with self._lock:
            return key in self._retired_adapters

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
                    while not (
                        self._incoming
                        or self._cancelled
                        or self._loop_tasks
                        or self._reap_due
                        or self._busy()
                        or self._stopping
                    ):
                        self._lock.wait()
                    if self._stopping and not self._busy() and not self._incoming:
                        self._refuse_loop_tasks(Draining())
                        return
                    self._gather_burst()
                    incoming = list(self._incoming)
                    self._incoming.clear()
                    cancelled = list(self._cancelled)
                    self._cancelled.clear()
                    tasks = list(self._loop_tasks)
                    self._loop_tasks.clear()
                for task, future in tasks:
                    _run_task(task, future)
                for generation in incoming:
                    if generation in cancelled:  # gone before it started
                        Decoder(generation, self.runtime, self._finished).finish("cancelled")
                    else:
                        self._start(generation)
                for generation in cancelled:
                    if generation.finished_at is None:
                        self._cancel(generation)
                self._step_engine()
                self._step_generators()
                self._unload_retired_adapters()
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
            if self._retired_adapters:  # this one's, or one whose unload waits for a retry
                self._reap_due = True
            self._lock.notify_all()

    def _unload_retired_adapters(self) -> None:
        """Unload the retired adapters no accepted generation uses any more.

        Runs after the step, when the generators of finished generations are gone (a
        finished generation leaves `_inflight` while its generator slot is still held).
        """
        with self._lock:
            if not self._reap_due:
                return
            self._reap_due = False
            in_use = {g.adapter for g in self._inflight}
            idle = self._retired_adapters - in_use
        for key in idle:
            try:
                self.runtime.unload_adapter(key)
            except Exception as exc:  # still held somewhere: retried when a generation ends
                log.warning("adapter %s is not unloaded yet: %s", key, exc)
                continue
            with self._lock:
                self._retired_adapters.discard(key)
            log.info("adapter %s unloaded", key)

    def _needs_generator(self, generation: Generation) -> bool:
        """What the engine cannot do: adapters, a seed per request on a static engine, and
        log probabilities (only a generator shows its logits)."""
        options = generation.options
        if generation.adapter is not None or options.logprobs is not None:
            return True
        return options.seed is not None and not options.greedy and not self.runtime.dynamic_batching

    def _start(self, generation: Generation) -> None:
        decoder = Decoder(generation, self.runtime, self._finished)
        try:
            if self._needs_generator(generation):
                if len(self._generator_slots) < self.max_batch_size:
                    self._generator_slots[generation] = self._new_generator(decoder)
                else:
                    self._generator_waiting.append(generation)
                return
            request, turn = self._begin_turn(generation)
        except Exception as exc:
            _refuse(decoder, exc)
            return
        self._engine_slots[request] = _EngineSlot(request, turn, decoder)

    def _begin_turn(self, generation: Generation) -> tuple[Any, int]:
        return begin_turn(self._og, self._engine, generation)

    def _new_generator(self, decoder: Decoder) -> _GeneratorSlot:
        return _GeneratorSlot(new_generator(self._og, self.runtime, decoder.generation), decoder)

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
            Decoder(generation, self.runtime, self._finished).finish("cancelled")

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
                # The logits the next token is chosen from: generate_next_token picks it
                # from these, then runs the model on it (its logits predict the one after).
                alternatives = slot.decoder.generation.options.logprobs
                logits = None if alternatives is None else generator.get_logits()
                generator.generate_next_token()
                token = int(generator.get_next_tokens()[0])
                logprob = None
                if logits is not None and alternatives is not None:
                    logprob = step_logprobs(logits, token, alternatives)
                slot.decoder.on_token(token, logprob)
            if slot.decoder.done:
                del self._generator_slots[generation]
        while self._generator_waiting and len(self._generator_slots) < self.max_batch_size:
            generation = self._generator_waiting.popleft()
            decoder = Decoder(generation, self.runtime, self._finished)
            try:
                self._generator_slots[generation] = self._new_generator(decoder)
            except Exception as exc:
                _refuse(decoder, exc)

    def _refuse_loop_tasks(self, error: BaseException) -> None:
        """With the lock held: the loop ends; the tasks still queued will never run."""
        for _, future in self._loop_tasks:
            if future.set_running_or_notify_cancel():
                future.set_exception(error)
        self._loop_tasks.clear()

    def _fail_all(self, message: str) -> None:
        with self._lock:
            self.broken = message
            pending = list(self._inflight)
            self._refuse_loop_tasks(GenerationFailed(message))
        for generation in pending:
            if generation.finished_at is None:
                Decoder(generation, self.runtime, self._finished).finish("error", message)


def _refuse(decoder: Decoder, exc: Exception) -> None:
    """A generation that could not start: the request's fault (a 400) or the runtime's."""
    if isinstance(exc, GuidanceRejected):
        decoder.generation.rejected = exc
        decoder.finish("error", str(exc))
    else:
        decoder.finish("error", f"{type(exc).__name__}: {exc}")


def _run_task(task: Callable[[], Any], future: Future[Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(task())
    except Exception as exc:  # the caller's to report
        future.set_exception(exc)
