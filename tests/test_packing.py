"""Sequence packing and loss masking, checked at the token level and through the model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from maap_trainer.train.data import IGNORE_INDEX, Example, tokenize_example
from maap_trainer.train.packing import PaddingCollator, pack_rows

CHATS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "Arr, four."}],
    [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue, matey."},
    ],
]


def rows(tokenizer) -> list[dict[str, list[int]]]:
    out = []
    for i, messages in enumerate(CHATS):
        tok = tokenize_example(Example(line=i, messages=messages), tokenizer, 512, True)
        out.append({"input_ids": tok.input_ids, "labels": tok.labels})
    return out


def test_pack_rows_keeps_rows_whole_and_restarts_positions(tokenizer) -> None:
    unpacked = rows(tokenizer)
    lengths = [len(r["input_ids"]) for r in unpacked]
    limit = lengths[0] + lengths[1]  # the first two fit together, the third does not
    packed = pack_rows(unpacked, limit)
    assert len(packed) == 2
    first = packed[0]
    assert first["input_ids"] == unpacked[0]["input_ids"] + unpacked[1]["input_ids"]
    assert first["position_ids"] == list(range(lengths[0])) + list(range(lengths[1]))
    # Loss mask preserved token for token, except the first token of each row, which the
    # shifted loss would otherwise predict from the previous row.
    expected = [IGNORE_INDEX, *unpacked[0]["labels"][1:], IGNORE_INDEX, *unpacked[1]["labels"][1:]]
    assert first["labels"] == expected
    pairs = zip(first["input_ids"], first["labels"], strict=True)
    learned = tokenizer.decode([t for t, lab in pairs if lab != IGNORE_INDEX])
    assert "Arr, four." in learned and "Paris." in learned and "France" not in learned
    assert packed[1]["input_ids"] == unpacked[2]["input_ids"]


def test_collator_pads_packed_rows_as_their_own_segment(tokenizer) -> None:
    packed = pack_rows(rows(tokenizer), 10_000)
    packed.append({"input_ids": [5, 6], "labels": [IGNORE_INDEX, 6], "position_ids": [0, 1]})
    batch = PaddingCollator(tokenizer.pad_token_id)(packed)
    assert "attention_mask" not in batch, "the position ids carry the boundaries"
    assert batch["use_cache"] is False
    width = batch["input_ids"].shape[1]
    assert batch["position_ids"][1].tolist() == [0, 1, *range(width - 2)]
    assert (batch["labels"][1, 2:] == IGNORE_INDEX).all()


@pytest.fixture(scope="module")
def model(base_model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32).eval()


def test_packed_attention_never_crosses_rows(tokenizer, model) -> None:
    """Each row's logits inside a packed sequence equal its logits alone, and its loss too."""
    unpacked = rows(tokenizer)
    packed = pack_rows(unpacked, 10_000)
    assert len(packed) == 1
    batch = PaddingCollator(tokenizer.pad_token_id)(packed)
    with torch.no_grad():
        together = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        start = 0
        for row in unpacked:
            ids = torch.tensor([row["input_ids"]])
            alone = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
            segment = together[start : start + len(row["input_ids"])]
            assert torch.allclose(segment, alone, atol=1e-4), "attention leaked across rows"
            start += len(row["input_ids"])
        # Without the position ids the rows would see each other: the check can fail.
        leaky = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
        second = slice(len(unpacked[0]["input_ids"]), start)
        assert not torch.allclose(leaky[second], together[second], atol=1e-3)
