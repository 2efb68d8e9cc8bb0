"""Log probabilities of the chosen tokens and their top alternatives, OpenAI's two shapes.

They are the model's own distribution at each step (a log-softmax of the raw logits),
before temperature, top-k/p, penalties or a grammar's mask: what OpenAI reports too. So a
greedy, unconstrained answer's token is always the first of its top alternatives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]  # best first; empty when no alternatives were asked


def step_logprobs(
    logits: Any, token: int, alternatives: int
) -> tuple[float, list[tuple[int, float]]]:
    """The chosen token's log probability and the `alternatives` most likely tokens."""
    import numpy as np  # not at import: the gateway (control plane) imports the wire types

    row = np.asarray(logits, dtype=np.float64).reshape(-1)
    top = row.max()
    normaliser = top + np.log(np.exp(row - top).sum())
    best: list[tuple[int, float]] = []
    if alternatives:
        ids = np.argpartition(-row, alternatives - 1)[:alternatives]
        ids = ids[np.argsort(-row[ids], kind="stable")]
        best = [(int(i), float(row[i] - normaliser)) for i in ids]
    return float(row[token] - normaliser), best


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    """`choices[].logprobs` of a chat completion (or one chunk's share of it)."""
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": _bytes(e.token),
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": _bytes(t)} for t, lp in e.top
                ],
            }
            for e in entries
        ],
        "refusal": None,
    }


def completion_logprobs(entries: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """`choices[].logprobs` of a text completion: parallel lists, offsets into the text."""
    offsets, at = [], offset
    for e in entries:
        offsets.append(at)
        at += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [dict(e.top) for e in entries],
        "text_offset": offsets,
    }
