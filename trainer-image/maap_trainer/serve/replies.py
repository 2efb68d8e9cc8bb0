"""Response bodies and SSE chunks: one request's choices (n generations), OpenAI's shapes.

A chat answer under tools is either text or tool calls (tools.py); log probabilities go
with the text they came from, in the chunk that releases it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from maap_trainer.serve.errors import error_body
from maap_trainer.serve.generation import Generation, GenerationFailed, Piece
from maap_trainer.serve.logprobs import TokenLogprob, chat_logprobs, completion_logprobs
from maap_trainer.serve.protocol import sse, usage
from maap_trainer.serve.tools import CallStream, ToolUse, parse_calls


@dataclass(frozen=True)
class Answer:
    generation: Generation
    text: str
    logprobs: list[TokenLogprob]


class Reply:
    """The bodies and chunks of one request."""

    def __init__(
        self, kind: str, model: str, tool_use: ToolUse | None = None, logprobs: bool = False
    ) -> None:
        prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.kind, self.model, self.created = kind, model, int(time.time())
        self.tool_use, self.logprobs = tool_use, logprobs

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }

    def chat(self, answers: list[Answer]) -> dict[str, Any]:
        choices = []
        for index, a in enumerate(answers):
            calls = parse_calls(a.text) if self.tool_use else None
            message: dict[str, Any] = {"role": "assistant", "content": a.text}
            reason = a.generation.finish_reason
            if calls:
                message = {"role": "assistant", "content": None, "tool_calls": calls}
                reason = "tool_calls" if reason == "stop" else reason
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": chat_logprobs(a.logprobs) if self.logprobs else None,
                    "finish_reason": reason,
                }
            )
        return {**self._envelope("chat.completion", choices), "usage": _usage(answers)}

    def completion(self, answers: list[Answer]) -> dict[str, Any]:
        choices = [
            {
                "index": index,
                "text": a.text,
                "logprobs": completion_logprobs(a.logprobs) if self.logprobs else None,
                "finish_reason": a.generation.finish_reason,
            }
            for index, a in enumerate(answers)
        ]
        return {**self._envelope("text_completion", choices), "usage": _usage(answers)}

    async def chat_chunks(self, gens: list[Generation], include_usage: bool) -> AsyncIterator[str]:
        def chunk(index: int, delta: dict[str, Any], finish: str | None = None,
                  logprobs: tuple[TokenLogprob, ...] = ()) -> str:  # fmt: skip
            choice = {
                "index": index,
                "delta": delta,
                "logprobs": chat_logprobs(list(logprobs)) if self.logprobs and logprobs else None,
                "finish_reason": finish,
            }
            return sse(self._envelope("chat.completion.chunk", [choice]))

        calls = [CallStream() if self.tool_use else None for _ in gens]
        held: list[tuple[TokenLogprob, ...]] = [() for _ in gens]  # of text not sent yet
        made_calls = [False for _ in gens]
        for index in range(len(gens)):
            yield chunk(index, {"role": "assistant", "content": ""})
        async for index, event in _merged(gens):
            stream = calls[index]
            if isinstance(event, dict):  # a failure after the 200 went out
                yield sse(event)
                yield sse("[DONE]")
                return
            if event is None:  # this choice is finished
                text, completed = stream.flush() if stream else ("", [])
            else:
                text, completed = stream.feed(event.text) if stream else (event.text, [])
                held[index] += event.logprobs
            if text:
                yield chunk(index, {"content": text}, logprobs=held[index])
                held[index] = ()
            first = stream.calls_sent - len(completed) if stream else 0
            for k, call in enumerate(completed):
                delta = {"tool_calls": [{"index": first + k, **call}]}
                yield chunk(index, delta, logprobs=held[index])
                held[index], made_calls[index] = (), True
            if event is None:
                reason = gens[index].finish_reason
                if made_calls[index] and reason == "stop":
                    reason = "tool_calls"
                yield chunk(index, {}, reason)
        if include_usage:
            answers = [Answer(g, "", []) for g in gens]
            yield sse({**self._envelope("chat.completion.chunk", []), "usage": _usage(answers)})
        yield sse("[DONE]")

    async def completion_chunks(
        self, gens: list[Generation], include_usage: bool
    ) -> AsyncIterator[str]:
        offsets = [0 for _ in gens]

        def chunk(index: int, piece: Piece | None, finish: str | None = None) -> str:
            text = piece.text if piece else ""
            logprobs = None
            if self.logprobs and piece and piece.logprobs:
                logprobs = completion_logprobs(list(piece.logprobs), offsets[index])
            offsets[index] += len(text)
            choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
            return sse(self._envelope("text_completion", [choice]))

        async for index, event in _merged(gens):
            if isinstance(event, dict):
                yield sse(event)
                yield sse("[DONE]")
                return
            if event is None:
                yield chunk(index, None, gens[index].finish_reason)
            else:
                yield chunk(index, event)
        if include_usage:
            answers = [Answer(g, "", []) for g in gens]
            yield sse({**self._envelope("text_completion", []), "usage": _usage(answers)})
        yield sse("[DONE]")


async def _merged(
    gens: list[Generation],
) -> AsyncIterator[tuple[int, Piece | dict[str, Any] | None]]:
    """Every choice's pieces as they come: (index, piece), then (index, None) when that
    choice is done; a failure is (index, error body) and ends the stream."""
    if len(gens) == 1:  # the common case, without a task per choice
        async for event in _events(gens[0]):
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, Piece | dict[str, Any] | None]] = asyncio.Queue()

    async def pump(index: int, g: Generation) -> None:
        async for event in _events(g):
            await queue.put((index, event))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    try:
        done = 0
        while done < len(gens):
            index, event = await queue.get()
            if event is None:
                done += 1
            yield index, event
            if isinstance(event, dict):
                return
    finally:
        for task in tasks:
            task.cancel()


async def _events(g: Generation) -> AsyncIterator[Piece | dict[str, Any] | None]:
    try:
        async for piece in g.pieces():
            yield piece
    except GenerationFailed as exc:
        yield error_body(f"generation failed: {exc}", "server_error", code="generation_failed")
        return
    yield None


def _usage(answers: list[Answer]) -> dict[str, int]:
    """The prompt once (OpenAI counts it once however many choices), every choice's tokens."""
    prompt = answers[0].generation.prompt_tokens
    return usage(prompt, sum(a.generation.completion_tokens for a in answers))
