"""One generation request: its sampling options, its text queue, and tokens-to-text.

The HTTP side creates a Generation and awaits its pieces; the scheduler thread feeds it
tokens through a `Decoder` (end of sequence, stop sequences, max_tokens).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from maap_trainer.serve.runtime import ModelRuntime
from maap_trainer.serve.textstream import StopMatcher


class QueueFull(Exception):
    """Every batch slot and queue place is taken."""


class Draining(Exception):
    """The server is shutting down and takes no new work."""


class GenerationFailed(Exception):
    pass


class AdapterUnavailable(Exception):
    """The generation names an adapter that is not loaded (or was unloaded meanwhile)."""


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
        self.adapter = adapter  # the runtime's key of the LoRA adapter, None for the base
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


class Decoder:
    """Tokens to text for one generation: end of sequence, stop sequences, max_tokens."""

    def __init__(
        self,
        generation: Generation,
        runtime: ModelRuntime,
        on_finish: Callable[[Generation], None],
    ) -> None:
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
