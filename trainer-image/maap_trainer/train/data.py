"""Load a data set, check every row, render it with the model's chat template, mask the loss.

Rows are checked up front, before any model is loaded, so a bad row costs seconds, not a
training run, and the error names the file and line.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from maap_api.errors import DatasetError

from maap_trainer.train.data_files import read_rows

IGNORE_INDEX = -100
ROLES = {"system", "user", "assistant"}


@dataclass
class Example:
    """One row, normalised: chat messages, or a prompt/completion pair, or plain text."""

    line: int
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    completion: str | None = None
    text: str | None = None
    label: str | None = None
    tokens: list[str] | None = None
    tags: list[str] | None = None


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


@dataclass
class DatasetSplits:
    train: list[Example]
    eval: list[Example]
    source: Path
    format: str
    counts: dict[str, int] = field(default_factory=dict)


class ChatTokenizer(Protocol):
    eos_token: str | None

    def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: Any) -> Any: ...

    def __call__(self, text: str, **kwargs: Any) -> Any: ...


def detect_format(row: Any) -> str:
    if isinstance(row, dict):
        if "messages" in row:
            return "chat"
        if "tokens" in row and "tags" in row:
            return "ner"
        if "text" in row and "label" in row:
            return "classification"
        if "instruction" in row and "output" in row:
            return "alpaca"
        if "prompt" in row and "completion" in row:
            return "prompt-completion"
        if "text" in row:
            return "text"
    raise DatasetError(
        "cannot detect the row format; expected `messages`, `instruction`+`output`, "
        "`prompt`+`completion`, `text`, `text`+`label` or `tokens`+`tags`"
    )


def _require_str(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        got = "missing" if key not in row else f"a {type(value).__name__}"
        raise DatasetError(f"{where}: `{key}` must be a string, got {got}")
    return value


def to_example(row: Any, fmt: str, where: str, line: int) -> Example:
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    if fmt == "chat":
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise DatasetError(f"{where}: `messages` must be a non-empty list")
        clean = []
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict):
                raise DatasetError(f"{where}: messages[{i}] must be an object")
            role = msg.get("role")
            if role not in ROLES:
                raise DatasetError(
                    f"{where}: messages[{i}].role must be one of system, user, assistant "
                    f"(got {role!r})"
                )
            clean.append({"role": role, "content": _require_str(msg, "content", where)})
        if not any(m["role"] == "assistant" for m in clean):
            raise DatasetError(f"{where}: `messages` has no assistant message to learn from")
        return Example(line=line, messages=clean)
    if fmt == "alpaca":
        instruction = _require_str(row, "instruction", where)
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise DatasetError(f"{where}: `input` must be a string")
        user = f"{instruction}\n\n{extra}" if extra else instruction
        messages = [
            {"role": "user", "content": user},
            {"role": "assistant", "content": _require_str(row, "output", where)},
        ]
        return Example(line=line, messages=messages)
    if fmt == "prompt-completion":
        return Example(
            line=line,
            prompt=_require_str(row, "prompt", where),
            completion=_require_str(row, "completion", where),
        )
    if fmt == "classification":
        label = row.get("label")
        if isinstance(label, bool) or not isinstance(label, str | int) or label == "":
            raise DatasetError(f"{where}: `label` must be a non-empty string or an integer")
        return Example(line=line, text=_require_str(row, "text", where), label=str(label))
    if fmt == "ner":
        tokens, tags = _str_list(row, "tokens", where), _str_list(row, "tags", where)
        if len(tokens) != len(tags):
            raise DatasetError(
                f"{where}: `tokens` has {len(tokens)} items but `tags` has {len(tags)}; "
                "give one tag per token"
            )
        return Example(line=line, tokens=tokens, tags=tags)
    return Example(line=line, text=_require_str(row, "text", where))


def _str_list(row: dict[str, Any], key: str, where: str) -> list[str]:
    value = row.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise DatasetError(f"{where}: `{key}` must be a non-empty list of strings")
    return value


def load_examples(path: Path, fmt: str = "auto") -> tuple[list[Example], str]:
    """Read and check every row; the first bad one raises with its file and line."""
    examples: list[Example] = []
    for where, lineno, row in read_rows(path):
        if fmt == "auto":
            try:
                fmt = detect_format(row)
            except DatasetError as exc:
                raise DatasetError(f"{where}: {exc}") from None
        examples.append(to_example(row, fmt, where, lineno))
    if not examples:
        raise DatasetError(f"dataset.path: {path}: the data set has no rows")
    return examples, fmt


def split_examples(
    examples: list[Example], eval_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """A deterministic shuffled split; at least one eval row when a fraction is asked for."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = 0 if eval_fraction <= 0 else max(1, round(len(examples) * eval_fraction))
    if n_eval >= len(examples):
        raise DatasetError(
            f"dataset.evalFraction: {eval_fraction} leaves no training rows out of {len(examples)}"
        )
    eval_idx = set(order[:n_eval])
    train = [e for i, e in enumerate(examples) if i not in eval_idx]
    held = [e for i, e in enumerate(examples) if i in eval_idx]
    return train, held


def load_dataset(
    path: Path, fmt: str, eval_fraction: float, seed: int, eval_path: str | None = None
) -> DatasetSplits:
    examples, detected = load_examples(path, fmt)
    if eval_path is None:
        train, held = split_examples(examples, eval_fraction, seed)
    else:
        held_path = Path(eval_path)
        held_path = held_path if held_path.is_absolute() else path.parent / held_path
        held, _ = load_examples(held_path, detected)
        train = examples
        examples = train + held
    return DatasetSplits(
        train=train,
        eval=held,
        source=path,
        format=detected,
        counts={"rows": len(examples), "train": len(train), "eval": len(held)},
    )


def _assistant_spans(tokenizer: ChatTokenizer, messages: list[dict[str, str]]) -> tuple[str, list]:
    """Render the conversation and return the character spans of every assistant turn.

    Each span runs from the end of the generation prompt before the turn to the end of the
    turn, so it includes the end-of-turn token the model must learn to emit.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(
            messages[:i], tokenize=False, add_generation_prompt=True
        )
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not text.startswith(through) or not through.startswith(before):
            raise DatasetError(
                "the model's chat template does not render conversations incrementally; "
                "set training.assistantOnlyLoss: false"
            )
        spans.append((len(before), len(through)))
    return text, spans


def tokenize_example(
    example: Example, tokenizer: ChatTokenizer, max_length: int, assistant_only: bool
) -> TokenizedExample:
    eos = tokenizer.eos_token or ""
    if example.messages is not None:
        text, spans = _assistant_spans(tokenizer, example.messages)
    elif example.prompt is not None:
        text = example.prompt + (example.completion or "") + eos
        spans = [(len(example.prompt), len(text))]
    else:
        text = (example.text or "") + eos
        spans = [(0, len(text))]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoded["input_ids"])
    offsets = encoded["offset_mapping"]
    if assistant_only:
        labels = [
            tok if any(start <= s < end for start, end in spans) else IGNORE_INDEX
            for tok, (s, _e) in zip(ids, offsets, strict=True)
        ]
    else:
        labels = list(ids)
    truncated = len(ids) > max_length
    return TokenizedExample(ids[:max_length], labels[:max_length], truncated)
