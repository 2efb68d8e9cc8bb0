"""One timed, streamed chat answer of exactly N tokens: what every serving benchmark sends.

The request is the same for maap's server and llama.cpp's: greedy, maap's `min_tokens` and
llama.cpp's `ignore_eos` (each ignores the other's field), usage in the last chunk.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx


def stream_one(http: Any, api: str, prompt: str, tokens: int) -> dict[str, float]:
    """One streamed greedy chat answer of exactly `tokens` tokens: maap honours
    min_tokens, llama-server ignore_eos; each ignores the other's field."""
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "min_tokens": tokens,
        "ignore_eos": True,
        # llama-server reuses a cached prompt prefix; the bench repeats its prompts, which
        # real traffic does not, so the cache is off (maap has none; it ignores the field).
        "cache_prompt": False,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    for attempt in range(2):
        try:
            return _stream(http, api, body, tokens)
        except httpx.RemoteProtocolError:
            # llama-server closes a kept-alive connection after a few requests; the pool
            # may hand out one it has just closed. Nothing was generated: send it again.
            if attempt:
                raise
    raise AssertionError("unreachable")


def _stream(http: Any, api: str, body: dict[str, Any], tokens: int) -> dict[str, float]:
    started = time.monotonic()
    first, completion = None, 0
    with http.stream("POST", f"{api}/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            if chunk.get("usage"):
                completion = chunk["usage"]["completion_tokens"]
            choices = chunk.get("choices") or []
            if first is None and choices and (choices[0].get("delta") or {}).get("content"):
                first = time.monotonic()
    ended = time.monotonic()
    if completion != tokens:
        raise RuntimeError(f"{api}: asked for exactly {tokens} tokens, the usage says {completion}")
    first = first or ended
    return {
        "tokens": completion,
        "ttft": first - started,
        "decode": (completion - 1) / (ended - first) if ended > first else 0.0,
    }
