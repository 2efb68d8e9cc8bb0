"""What each task trains on: tokenized rows, the batch collator, the head and its metrics.

causal-lm: chat/alpaca/prompt-completion/text rows with loss masking, optionally packed.
text-classification: `text`/`label` rows, accuracy and macro F1.
token-classification (NER): `tokens`/`tags` rows in IOB2, labels on each word's first
sub-token, token accuracy and entity-level F1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from maap_api.errors import ConfigError
from maap_api.stage_config import TrainerConfig

from maap_trainer import iob2
from maap_trainer.train.data import IGNORE_INDEX, DatasetSplits, Example, tokenize_example
from maap_trainer.train.methods import CAUSAL_LM, TaskHead
from maap_trainer.train.packing import PaddingCollator, pack_rows

Row = dict[str, Any]


@dataclass
class TaskData:
    head: TaskHead
    train: list[Row]
    eval: list[Row]
    collator: Callable[[list[Row]], dict[str, Any]]
    compute_metrics: Callable[[Any], dict[str, float]] | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def prepare_task(cfg: TrainerConfig, splits: DatasetSplits, tokenizer: Any) -> TaskData:
    task = cfg.training.task
    if task == "causal-lm":
        return _causal_lm(cfg, splits, tokenizer)
    if task == "text-classification":
        return _classification(cfg, splits, tokenizer)
    return _token_classification(cfg, splits, tokenizer)


# -- causal LM ---------------------------------------------------------------------------


def _causal_lm(cfg: TrainerConfig, splits: DatasetSplits, tokenizer: Any) -> TaskData:
    hp = cfg.training
    truncated = dropped = 0

    def encode(rows: list[Example]) -> list[Row]:
        nonlocal truncated, dropped
        out = []
        for example in rows:
            tok = tokenize_example(example, tokenizer, hp.max_seq_length, hp.assistant_only_loss)
            truncated += tok.truncated
            if any(label != IGNORE_INDEX for label in tok.labels):
                out.append({"input_ids": tok.input_ids, "labels": tok.labels})
            else:
                dropped += 1  # truncation cut off every token it could learn from
        return out

    train, held = encode(splits.train), encode(splits.eval)
    stats: dict[str, Any] = {"truncatedRows": truncated, "droppedRows": dropped}
    if hp.packing:
        stats["packedFromRows"] = len(train)
        # Eval rows are packed too, so eval loss is computed the way training sees data.
        train, held = pack_rows(train, hp.max_seq_length), pack_rows(held, hp.max_seq_length)
    return TaskData(CAUSAL_LM, train, held, PaddingCollator(tokenizer.pad_token_id), None, stats)


# -- classification ----------------------------------------------------------------------


def label_names(values: list[str], outside: str | None = None) -> list[str]:
    names = sorted(set(values))
    if outside in names:
        names.remove(outside)
        names.insert(0, outside)
    return names


def _head(auto_class: str, peft_type: str, names: list[str]) -> TaskHead:
    return TaskHead(
        auto_class,
        peft_type,
        {
            "num_labels": len(names),
            "id2label": dict(enumerate(names)),
            "label2id": {name: i for i, name in enumerate(names)},
            # The checkpoint's head (if any) has another shape; a fresh one is expected.
            "ignore_mismatched_sizes": True,
        },
        head_modules=("classifier", "score"),
    )


def _classification(cfg: TrainerConfig, splits: DatasetSplits, tokenizer: Any) -> TaskData:
    names = label_names([e.label or "" for e in splits.train + splits.eval])
    if len(names) < 2:
        raise ConfigError(f"dataset: text-classification needs at least 2 labels, found {names}")
    index = {n: i for i, n in enumerate(names)}
    rows = _Truncating(cfg.training.max_seq_length)

    def encode(examples: list[Example]) -> list[Row]:
        return [
            rows.row(tokenizer(e.text or "", truncation=False), index[e.label or ""])
            for e in examples
        ]

    from transformers import DataCollatorWithPadding

    return TaskData(
        _head("AutoModelForSequenceClassification", "SEQ_CLS", names),
        encode(splits.train),
        encode(splits.eval),
        DataCollatorWithPadding(tokenizer),
        classification_metrics,
        {"truncatedRows": rows.truncated, "labels": names},
    )


@dataclass
class _Truncating:
    """Encoded rows cut to max_len tokens, counting how many were cut."""

    max_len: int
    truncated: int = 0

    def row(self, enc: Any, labels: int | list[int]) -> Row:
        self.truncated += len(enc["input_ids"]) > self.max_len
        cut = self.max_len
        return {
            "input_ids": enc["input_ids"][:cut],
            "attention_mask": enc["attention_mask"][:cut],
            "labels": labels if isinstance(labels, int) else labels[:cut],
        }


def classification_metrics(prediction: Any) -> dict[str, float]:
    import numpy as np

    predicted = np.argmax(prediction.predictions, axis=-1)
    gold = np.asarray(prediction.label_ids)
    return {"accuracy": float((predicted == gold).mean()), "f1": macro_f1(gold, predicted)}


def macro_f1(gold: Any, predicted: Any) -> float:
    scores = []
    for label in sorted(set(gold.tolist()) | set(predicted.tolist())):
        tp = int(((predicted == label) & (gold == label)).sum())
        fp = int(((predicted == label) & (gold != label)).sum())
        fn = int(((predicted != label) & (gold == label)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(sum(scores) / len(scores)) if scores else 0.0


# -- token classification (NER) ----------------------------------------------------------


def _token_classification(cfg: TrainerConfig, splits: DatasetSplits, tokenizer: Any) -> TaskData:
    names = label_names([t for e in splits.train + splits.eval for t in e.tags or []], "O")
    for name in names:
        if not iob2.is_tag(name):
            raise ConfigError(f"dataset: NER tag {name!r} is not IOB2 (O, B-TYPE or I-TYPE)")
    index = {n: i for i, n in enumerate(names)}
    rows = _Truncating(cfg.training.max_seq_length)

    def encode(examples: list[Example]) -> list[Row]:
        out = []
        for e in examples:
            enc = tokenizer(e.tokens, is_split_into_words=True, truncation=False)
            labels, previous = [], None
            for word in enc.word_ids():
                # Only a word's first sub-token carries its tag; the rest are not scored.
                labels.append(
                    IGNORE_INDEX if word is None or word == previous else index[e.tags[word]]
                )
                previous = word
            out.append(rows.row(enc, labels))
        return out

    from transformers import DataCollatorForTokenClassification

    return TaskData(
        _head("AutoModelForTokenClassification", "TOKEN_CLS", names),
        encode(splits.train),
        encode(splits.eval),
        DataCollatorForTokenClassification(tokenizer),
        lambda prediction: ner_metrics(prediction, names),
        {"truncatedRows": rows.truncated, "labels": names},
    )


def ner_metrics(prediction: Any, names: list[str]) -> dict[str, float]:
    import numpy as np

    predicted = np.argmax(prediction.predictions, axis=-1)
    gold = np.asarray(prediction.label_ids)
    correct = total = tp = n_pred = n_gold = 0
    for p_row, g_row in zip(predicted, gold, strict=True):
        keep = g_row != IGNORE_INDEX
        p_tags = [names[i] for i in p_row[keep]]
        g_tags = [names[i] for i in g_row[keep]]
        correct += sum(p == g for p, g in zip(p_tags, g_tags, strict=True))
        total += len(g_tags)
        p_spans, g_spans = set(iob2.entity_spans(p_tags)), set(iob2.entity_spans(g_tags))
        tp += len(p_spans & g_spans)
        n_pred += len(p_spans)
        n_gold += len(g_spans)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": correct / total if total else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }
