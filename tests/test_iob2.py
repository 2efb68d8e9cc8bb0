"""IOB2 decoding (maap_trainer.iob2): one reading for the trainer's entity F1 and the server."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from maap_trainer.iob2 import entity_spans, is_tag
from maap_trainer.train.tasks import ner_metrics

NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@pytest.mark.parametrize(
    ("tags", "spans"),
    [
        (["B-PER", "I-PER", "O", "B-LOC"], [(0, 2, "PER"), (3, 4, "LOC")]),
        (["B-PER", "B-PER"], [(0, 1, "PER"), (1, 2, "PER")]),  # B- always starts a new one
        (["O", "I-PER", "I-PER"], [(1, 3, "PER")]),  # an I- without its B- starts one
        (["B-PER", "I-LOC"], [(0, 1, "PER"), (1, 2, "LOC")]),  # another type ends it
        (["I-LOC"], [(0, 1, "LOC")]),  # an entity that runs to the end
        (["O", "O"], []),
        ([], []),
    ],
)
def test_entity_spans(tags: list[str], spans: list[tuple[int, int, str]]) -> None:
    assert entity_spans(tags) == spans


def test_only_o_and_typed_b_i_tags_are_iob2() -> None:
    assert all(map(is_tag, ["O", "B-PER", "I-LOC", "B-MISC-X"]))
    assert not any(map(is_tag, ["B-", "I", "PER", "E-PER", "o", "B_PER", ""]))


def test_trainer_f1_counts_the_entities_the_decoder_finds() -> None:
    gold = ["B-PER", "I-PER", "O", "B-LOC"]
    predicted = ["B-PER", "I-PER", "O", "I-LOC"]  # the same two entities, LOC opened by I-
    wrong = ["B-PER", "O", "O", "B-LOC"]  # PER cut short: one of two right

    def metrics(tags: list[str]) -> dict[str, float]:
        logits = np.eye(len(NAMES))[[NAMES.index(t) for t in tags]][None]
        labels = np.array([[*(NAMES.index(t) for t in gold), -100]])  # -100: not scored
        logits = np.concatenate([logits, np.zeros((1, 1, len(NAMES)))], axis=1)
        return ner_metrics(SimpleNamespace(predictions=logits, label_ids=labels), NAMES)

    assert metrics(predicted)["f1"] == 1.0 and metrics(predicted)["accuracy"] == 0.75
    assert metrics(wrong) == pytest.approx(
        {"accuracy": 0.75, "precision": 0.5, "recall": 0.5, "f1": 0.5}
    )
