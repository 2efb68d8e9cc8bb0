"""Data files: JSONL, JSON, CSV and Parquet, the classification and NER formats, and errors
that name the file and line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from maap_api.errors import DatasetError
from maap_trainer.train.data import load_dataset, load_examples

from tests.conftest import EXAMPLES

CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ahoy"}]}


def test_csv_with_chat_messages_and_alpaca(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["messages"])
        writer.writerow([json.dumps(CHAT["messages"])])
        writer.writerow([json.dumps(CHAT["messages"])])
    examples, fmt = load_examples(path)
    assert fmt == "chat" and examples[0].messages == CHAT["messages"]
    alpaca = tmp_path / "a.csv"
    alpaca.write_text('instruction,input,output\nAdd,"2+2",4\n"Say\nhi",,hello\nAdd,1+1,2\n')
    examples, fmt = load_examples(alpaca)
    assert fmt == "alpaca" and [e.line for e in examples] == [2, 3, 5], "a record's first line"


def test_csv_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('text,label\nfine,pos\n"multi\nline",\nextra,pos,oops\n')
    with pytest.raises(DatasetError, match=r"d.csv:3: `label` must be a non-empty string"):
        load_examples(path)
    path.write_text("messages\n[not json\n")
    with pytest.raises(DatasetError, match=r"d.csv:2: column `messages` must hold JSON"):
        load_examples(path)
    path.write_text("text,label\nfine,pos\nextra,pos,oops\n")
    with pytest.raises(DatasetError, match=r"d.csv:3: more cells than header columns"):
        load_examples(path)


def test_parquet_and_json(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(
        [{"prompt": "2+2=", "completion": "4"}, {"prompt": "3+3=", "completion": None}]
    )
    pq.write_table(table, tmp_path / "d.parquet")
    with pytest.raises(DatasetError, match=r"d.parquet: row 2: `completion` must be a string"):
        load_examples(tmp_path / "d.parquet")
    pq.write_table(table.slice(0, 1), tmp_path / "ok.parquet")
    examples, fmt = load_examples(tmp_path / "ok.parquet")
    assert fmt == "prompt-completion" and examples[0].completion == "4"
    (tmp_path / "d.json").write_text(json.dumps([CHAT, {"messages": "x"}]))
    with pytest.raises(DatasetError, match=r"d.json: row 2: `messages` must be a non-empty list"):
        load_examples(tmp_path / "d.json")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"unknown file type '.txt'"):
        load_examples(tmp_path / "d.txt")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"tokens": ["a", "b"], "tags": ["O"]}, "`tokens` has 2 items but `tags` has 1"),
        ({"tokens": [], "tags": []}, "`tokens` must be a non-empty list of strings"),
        ({"text": "x", "label": True}, "`label` must be a non-empty string or an integer"),
    ],
)
def test_task_rows_are_checked(tmp_path: Path, row: dict, message: str) -> None:
    path = tmp_path / "d.jsonl"
    good = {"tokens": ["a"], "tags": ["O"]} if "tokens" in row else {"text": "y", "label": 1}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DatasetError, match=rf"d.jsonl:2: {message}"):
        load_examples(path)


def test_bundled_task_data_sets() -> None:
    splits = load_dataset(EXAMPLES / "support-tickets" / "train.jsonl", "auto", 0.1, 1,
                          "heldout.jsonl")  # fmt: skip
    assert splits.format == "classification"
    assert {e.label for e in splits.train} == {"billing", "shipping", "technical", "account"}
    assert splits.counts == {"rows": 156, "train": 120, "eval": 36}
    held_texts = {e.text for e in splits.eval}
    assert not held_texts & {e.text for e in splits.train}, "held-out rows are new sentences"
    ner = load_dataset(EXAMPLES / "ner-news" / "train.jsonl", "auto", 0.1, 1, "heldout.jsonl")
    assert ner.format == "ner" and len(ner.train) == 160 and len(ner.eval) == 48
    train_words = {t for e in ner.train for t in e.tokens or []}
    assert "Rossi" not in train_words and any("Rossi" in (e.tokens or []) for e in ner.eval)
