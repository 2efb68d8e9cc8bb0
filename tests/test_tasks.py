"""The classification and NER rows the trainer builds (maap_trainer.train.tasks), on the MiniLM
tokenizer: cut to maxSeqLength and counted when cut; NER tags on each word's first piece."""

from __future__ import annotations

from pathlib import Path

import pytest
from maap_api.errors import ConfigError
from maap_api.stage_config import ModelSource, TrainerConfig
from maap_trainer.train.data import IGNORE_INDEX, DatasetSplits, Example
from maap_trainer.train.tasks import prepare_task

MAX_LEN = 16
LONG = [f"word{i}" for i in range(MAX_LEN + 4)]


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from maap_trainer.model_prep import prepare_base_model
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(prepare_base_model(ModelSource(preset="all-minilm-l6-v2")))


def config(task: str) -> TrainerConfig:
    return TrainerConfig.model_validate({
        "jobName": "tasks", "model": {"preset": "all-minilm-l6-v2"},
        "dataset": {"path": "train.jsonl"}, "training": {"task": task, "maxSeqLength": MAX_LEN},
        "export": {"enabled": False}, "serving": {"enabled": False}, "outputDir": "out",
    })  # fmt: skip


def splits(rows: list[Example]) -> DatasetSplits:
    return DatasetSplits(rows, rows[:1], Path("train.jsonl"), "test")


def test_text_classification_rows(minilm_tokenizer) -> None:
    rows = [Example(1, text="short one", label="b"), Example(2, text=" ".join(LONG), label="a")]
    data = prepare_task(config("text-classification"), splits(rows), minilm_tokenizer)
    assert data.stats == {"truncatedRows": 1, "labels": ["a", "b"]}  # eval: the short row
    short, long = data.train
    assert minilm_tokenizer.convert_ids_to_tokens(short["input_ids"]) == [
        "[CLS]", "short", "one", "[SEP]"]  # fmt: skip
    assert short["labels"] == 1 and long["labels"] == 0
    assert len(long["input_ids"]) == len(long["attention_mask"]) == MAX_LEN


def test_token_classification_rows_tag_each_words_first_piece(minilm_tokenizer) -> None:
    rows = [
        Example(1, tokens=["Angela", "Merkel", "visited", "Pariszzz"],
                tags=["B-PER", "I-PER", "O", "B-LOC"]),
        Example(2, tokens=LONG, tags=["O"] * len(LONG)),
    ]  # fmt: skip
    data = prepare_task(config("token-classification"), splits(rows), minilm_tokenizer)
    names = data.stats["labels"]
    assert names[0] == "O" and data.stats["truncatedRows"] == 1
    row = data.train[0]
    pieces = minilm_tokenizer.convert_ids_to_tokens(row["input_ids"])
    assert pieces[:4] == ["[CLS]", "angela", "mer", "##kel"] and pieces[-1] == "[SEP]"
    tags = [None if i == IGNORE_INDEX else names[i] for i in row["labels"]]
    assert tags == [None, "B-PER", "I-PER", None, "O", "B-LOC", *[None] * (len(pieces) - 6)]
    long = data.train[1]
    assert len(long["input_ids"]) == len(long["labels"]) == MAX_LEN


def test_tags_that_are_not_iob2_are_refused(minilm_tokenizer) -> None:
    rows = [Example(1, tokens=["Paris"], tags=["LOC"])]
    with pytest.raises(ConfigError, match="NER tag 'LOC' is not IOB2"):
        prepare_task(config("token-classification"), splits(rows), minilm_tokenizer)
