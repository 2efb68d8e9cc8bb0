"""Batching for causal LM rows: dynamic padding, or packing several rows per sequence.

A packed sequence carries position ids that restart at 0 for every row, no attention
mask and no KV cache; transformers then builds a block-diagonal causal mask from the
position ids, so a token never attends to another row. The first label of each row is
ignored, because the shifted loss would otherwise train the last token of one row to
predict the next row.
"""

from __future__ import annotations

from typing import Any

from maap_trainer.train.data import IGNORE_INDEX

Row = dict[str, list[int]]


def pack_rows(rows: list[Row], max_length: int) -> list[Row]:
    """First-fit in row order: each row goes into the first sequence it still fits in."""
    bins: list[Row] = []
    for row in rows:
        ids, labels = row["input_ids"][:max_length], row["labels"][:max_length]
        target = next((b for b in bins if len(b["input_ids"]) + len(ids) <= max_length), None)
        if target is None:
            target = {"input_ids": [], "labels": [], "position_ids": []}
            bins.append(target)
        target["input_ids"] += ids
        target["labels"] += [IGNORE_INDEX, *labels[1:]]
        target["position_ids"] += list(range(len(ids)))
    return bins


class PaddingCollator:
    """Pad to the longest row of the batch (labels padded with -100).

    Packed rows (with position ids) get no attention mask: the padding becomes one more
    segment of its own, with its own positions, that no label reads.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        packed = "position_ids" in rows[0]
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n] = torch.tensor(row["input_ids"])
            labels[i, :n] = torch.tensor(row["labels"])
            mask[i, :n] = 1
            if packed:
                positions[i, :n] = torch.tensor(row["position_ids"])
                positions[i, n:] = torch.arange(width - n)
        if packed:
            # No cache: transformers only derives the per-row mask when there is none.
            return {
                "input_ids": ids,
                "labels": labels,
                "position_ids": positions,
                "use_cache": False,
            }
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
