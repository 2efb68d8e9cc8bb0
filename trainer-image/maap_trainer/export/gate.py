"""Wire the parity gate to a job: its merged model, its export, its eval split."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from maap_api.errors import DatasetError
from maap_api.stage_config import TrainerConfig

from maap_trainer.export.parity import (
    DEFAULT_TEXTS,
    OnnxSide,
    ParityResult,
    ScoredText,
    TorchSide,
    compare,
    judge,
    texts_from_strings,
)

log = logging.getLogger("maap.export")


def load_eval_split(cfg: TrainerConfig) -> list[Any]:
    """The eval rows training held out (or the job's evalPath file)."""
    from maap_trainer.fetch import local_dataset_paths
    from maap_trainer.train.data import load_dataset

    dataset = cfg.dataset
    train_path, eval_path = local_dataset_paths(cfg)  # a remote file's fetched copy
    splits = load_dataset(
        train_path, dataset.format, dataset.eval_fraction, cfg.training.seed, eval_path
    )
    return splits.eval


def eval_texts(cfg: TrainerConfig, tokenizer: object) -> tuple[list[ScoredText], str]:
    """The eval split scored like training scores it (assistant tokens only if so trained)."""
    from maap_trainer.train.data import IGNORE_INDEX, tokenize_example

    try:
        eval_rows = load_eval_split(cfg)
    except (DatasetError, OSError) as exc:
        log.warning("perplexity on built-in texts: the eval split is unavailable (%s)", exc)
        return texts_from_strings(tokenizer, DEFAULT_TEXTS), "built-in texts"
    texts = []
    for example in eval_rows[: cfg.export.parity.eval_rows]:
        tok = tokenize_example(
            example,
            tokenizer,  # type: ignore[arg-type]
            cfg.training.max_seq_length,
            cfg.training.assistant_only_loss,
        )
        if any(label != IGNORE_INDEX for label in tok.labels[1:]):
            texts.append(ScoredText(tok.input_ids, tok.labels))
    if not texts:
        return texts_from_strings(tokenizer, DEFAULT_TEXTS), "built-in texts"
    return texts, f"eval split ({len(texts)} rows)"


def run_gate(
    cfg: TrainerConfig,
    merged: Path,
    exported: Path,
    adapter: tuple[Path, str] | None = None,
) -> ParityResult:
    """PyTorch (merged checkpoint) against the export, or the base export plus an adapter.

    An adapter applied unmerged rounds differently from the merged weights, so even in fp32
    it is held to the agreement and perplexity thresholds rather than exact equality.
    """
    torch_side = TorchSide(merged)
    texts, source = eval_texts(cfg, torch_side.tokenizer)
    label = cfg.export.precision if adapter is None else f"{cfg.export.precision}+adapter"
    result = compare(
        torch_side, lambda: OnnxSide(exported, adapter), label, cfg.export.parity, texts, source
    )
    return judge(result, cfg.export.parity)
