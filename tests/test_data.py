"""Data sets: every format, row checks with file:line, and loss masking at the token level."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from maap_api.errors import DatasetError
from maap_trainer.train.data import (
    IGNORE_INDEX,
    Example,
    load_dataset,
    load_examples,
    split_examples,
    tokenize_example,
)

from tests.conftest import PIRATE_DATA


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def decode_where(tokenizer, tok, learned: bool) -> str:
    """The text of the tokens that carry a label (learned) or are masked out."""
    pairs = zip(tok.input_ids, tok.labels, strict=True)
    return tokenizer.decode([t for t, lab in pairs if (lab != IGNORE_INDEX) == learned])


CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ahoy"}]}


def test_bundled_dataset_loads_as_chat() -> None:
    splits = load_dataset(PIRATE_DATA / "train.jsonl", "auto", 0.1, seed=42)
    assert splits.format == "chat"
    assert splits.counts == {"rows": 320, "train": 288, "eval": 32}
    again = load_dataset(PIRATE_DATA / "train.jsonl", "auto", 0.1, seed=42)
    assert [e.line for e in again.eval] == [e.line for e in splits.eval], "split is deterministic"


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        (CHAT, "chat"),
        ({"instruction": "Add", "input": "2+2", "output": "4"}, "alpaca"),
        ({"prompt": "2+2=", "completion": "4"}, "prompt-completion"),
        ({"text": "Once upon a time"}, "text"),
    ],
)
def test_formats_are_detected(tmp_path: Path, row: dict, fmt: str) -> None:
    examples, detected = load_examples(write_jsonl(tmp_path / "d.jsonl", [row, row]))
    assert detected == fmt and len(examples) == 2


def test_alpaca_becomes_a_conversation(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"instruction": "Add", "input": "2+2", "output": "4"}]
    )
    [example], _ = load_examples(path)
    assert example.messages == [
        {"role": "user", "content": "Add\n\n2+2"},
        {"role": "assistant", "content": "4"},
    ]


def test_malformed_row_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(CHAT) + "\n\n" + '{"messages": [oops\n')
    with pytest.raises(DatasetError, match=r"d.jsonl:3: invalid JSON"):
        load_examples(path)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"messages": []}, "`messages` must be a non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role must be one of"),
        ({"messages": [{"role": "user", "content": 3}]}, "`content` must be a string, got a int"),
        ({"messages": [{"role": "user", "content": "x"}]}, "no assistant message"),
        (["not", "an", "object"], "a row must be a JSON object"),
    ],
)
def test_bad_rows_are_rejected_with_line(tmp_path: Path, bad, message: str) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [CHAT, bad])
    with pytest.raises(DatasetError) as err:
        load_examples(path, "chat")
    assert f"d.jsonl:2: {message}" in str(err.value) or (
        "d.jsonl:2:" in str(err.value) and message in str(err.value)
    )


def test_undetectable_format_and_empty_and_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"d.jsonl:1: cannot detect the row format"):
        load_examples(write_jsonl(tmp_path / "d.jsonl", [{"question": "?"}]))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DatasetError, match="has no rows"):
        load_examples(tmp_path / "empty.jsonl")
    with pytest.raises(DatasetError, match=r"dataset\.path: .*missing\.jsonl: no such file"):
        load_examples(tmp_path / "missing.jsonl")


def test_split_keeps_one_eval_row_and_refuses_to_empty_train() -> None:
    rows = [Example(line=i) for i in range(5)]
    train, held = split_examples(rows, 0.01, seed=1)
    assert len(held) == 1 and len(train) == 4
    assert split_examples(rows, 0.0, seed=1)[1] == []
    with pytest.raises(DatasetError, match="evalFraction"):
        split_examples([Example(line=1)], 0.5, seed=1)


def test_chat_loss_covers_only_assistant_turns(tokenizer) -> None:
    messages = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "Arr, matey! Four."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "Arr, matey! Six."},
    ]
    tok = tokenize_example(Example(line=1, messages=messages), tokenizer, 512, True)
    learned = decode_where(tokenizer, tok, learned=True)
    ignored = decode_where(tokenizer, tok, learned=False)
    assert "Arr, matey! Four." in learned and "Arr, matey! Six." in learned
    assert learned.count("<|im_end|>") == 2, "the model must learn to end its turn"
    assert "What is 2+2?" in ignored and "And 3+3?" in ignored
    assert "What is 2+2?" not in learned and "user" not in learned
    # Labels are the input ids themselves where learned (the model shifts them).
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(tok.input_ids, tok.labels, strict=False))


def test_full_loss_and_truncation(tokenizer) -> None:
    example = Example(
        line=1,
        messages=[{"role": "user", "content": "hi " * 50}, {"role": "assistant", "content": "yo"}],
    )
    full = tokenize_example(example, tokenizer, 512, assistant_only=False)
    assert full.labels == full.input_ids and not full.truncated
    short = tokenize_example(example, tokenizer, 16, assistant_only=True)
    assert short.truncated and len(short.input_ids) == 16
    assert all(lab == IGNORE_INDEX for lab in short.labels), "the answer was cut off"


def test_prompt_completion_masks_the_prompt(tokenizer) -> None:
    tok = tokenize_example(
        Example(line=1, prompt="Q: 2+2\nA:", completion=" 4"), tokenizer, 64, True
    )
    learned = decode_where(tokenizer, tok, learned=True)
    assert learned == " 4" + tokenizer.eos_token
