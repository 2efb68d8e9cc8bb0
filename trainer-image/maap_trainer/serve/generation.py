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

from maap_trainer.serve.logprobs import TokenLogprob
from maap_trainer.serve.runtime import ModelRuntime
from maap_trainer.serve.structured import Guidance
from maap_trainer.serve.textstream import StopMatcher


class QueueFull(Exception):
    """Every batch slot and queue place is taken."""


class Draining(Exception):
    """The server is shutting down and takes no new work."""


class GenerationFailed(Exception):
    pass


class AdapterUnavailable(Exception):
    """The generation names an adapter that is not loaded (or was unloaded meanwhile)."""


class GuidanceRejected(Exception):
    """The grammar a request's response_format or tools make cannot be compiled."""

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(f"{param}: not a grammar ONNX Runtime GenAI can enforce: {reason}")
        self.param = param


@dataclass(frozen=True)
class SamplingOptions:
    max_tokens: int
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    seed: int | None = None
    stop: tuple[str, ...] = ()
    guidance: Guidance | None = None  # response_format or tools: the grammar to hold to
    repetition_penalty: float | None = None
    logprobs: int | None = None  # alternatives per token (0: the chosen one's); None: off

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class Piece:
    """Text released to the client, and the log probabilities of the tokens it came from."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


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
        self.rejected: GuidanceRejected | None = None  # a 400, not a server failure
        self.submitted_at = time.monotonic()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._started = asyncio.Event()  # its first token came, or it ended without one

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

    def mark_started(self) -> None:
        """From the scheduler thread."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._started.set)

    async def started(self) -> None:
        await self._started.wait()

    async def pieces(self) -> AsyncIterator[Piece]:
        while True:
            item = await self._queue.get()
            if item is _DONE:
                if self.error is not None:
                    raise GenerationFailed(self.error)
                return
            assert isinstance(item, Piece)
            yield item

    async def text(self) -> str:
        return "".join([piece.text async for piece in self.pieces()])

    async def result(self) -> tuple[str, list[TokenLogprob]]:
        pieces = [piece async for piece in self.pieces()]
        return "".join(p.text for p in pieces), [lp for p in pieces for lp in p.logprobs]


class Decoder:
    """Tokens to text for one generation: end of sequence, stop sequences, max_tokens."""

    def __init__(
        self,
        generation: Generation,
        runtime: ModelRuntime,
        on_finish: Callable[[Generation], None],
    ) -> None:
        self.generation = generation
        self.runtime = runtime
        self.stream = runtime.create_stream()
        self.matcher = StopMatcher(generation.options.stop)
        self.eos = runtime.eos_token_ids
        self.done = False
        self._on_finish = on_finish
        self._logprobs: list[TokenLogprob] = []  # of tokens whose text is not released yet

    def on_token(
        self, token: int, logprob: tuple[float, list[tuple[int, float]]] | None = None
    ) -> bool:
        """Take one generated token (and its log probabilities, when they were asked for);
        True once the generation is finished."""
        g = self.generation
        if g.first_token_at is None:
            g.first_token_at = time.monotonic()
            g.mark_started()
        if token in self.eos:
            return self.finish("stop")
        g.completion_tokens += 1
        if logprob is not None:
            text_of = self.runtime.token_text
            chosen, top = logprob
            self._logprobs.append(
                TokenLogprob(text_of(token), chosen, tuple((text_of(t), lp) for t, lp in top))
            )
        text = self.matcher.feed(self.stream.decode(token))
        if text:
            self._release(text)
        if self.matcher.stopped:
            self._logprobs.clear()  # the stop sequence's tokens: not part of the answer
            return self.finish("stop")
        if g.completion_tokens >= g.options.max_tokens:
            return self.finish("length")
        return False

    def _release(self, text: str) -> None:
        self.generation.push(Piece(text, tuple(self._logprobs)))
        self._logprobs.clear()

    def finish(self, reason: str, error: str | None = None) -> bool:
        if self.done:
            return True
        self.done = True
        g = self.generation
        tail = self.matcher.flush()
        if (tail or self._logprobs) and error is None:
            self._release(tail)
        g.finish_reason, g.error, g.finished_at = reason, error, time.monotonic()
        g.push(_DONE)
        g.mark_started()
        self._on_finish(g)
        return True
