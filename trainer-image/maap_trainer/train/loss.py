"""Causal LM loss on the supervised positions only.

A model's own loss runs the output head over every position of the batch: prompt tokens,
padding, system prompts. With assistant-only labels most of those predictions are thrown
away, yet for a small model the head is a large share of the work (SmolLM2: a 576 x 49152
matmul per token, against ~106M multiply-adds for the 30 layers) and its logits are the
largest activation kept for backward. Here the head sees only the hidden states whose next
token has a label; the loss is the same cross-entropy (same normalisation as transformers'
`ForCausalLMLoss`), computed on fewer rows.

How: a forward pre-hook on the output embeddings gathers those hidden states while the
trainer has it armed (during `compute_loss`), and the Trainer's `compute_loss_func` takes
the loss from the smaller logits. The hook sits on the module itself, so it works through
peft, DDP and DeepSpeed wrappers alike.
"""

from __future__ import annotations

from typing import Any

from maap_trainer.train.data import IGNORE_INDEX


class SupervisedPositionsLoss:
    def __init__(self) -> None:
        self._keep: Any = None  # bool [batch, seq-1]: hidden state t predicts label t+1
        self._targets: Any = None
        self._handle: Any = None

    def attach(self, model: Any) -> None:
        head = model.get_output_embeddings()
        if head is None:
            raise ValueError("the model has no output embeddings to compute the loss with")
        self._handle = head.register_forward_pre_hook(self._gather)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def arm(self, labels: Any) -> None:
        shifted = labels[:, 1:]
        self._keep = shifted != IGNORE_INDEX
        self._targets = shifted[self._keep]

    def disarm(self) -> None:
        self._keep = self._targets = None

    def _gather(self, module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if self._keep is None:
            return None  # not inside compute_loss: generation, export, anything else
        hidden = args[0]
        if hidden.dim() != 3 or hidden.shape[1] != self._keep.shape[1] + 1:
            raise RuntimeError(
                f"output head got hidden states of shape {tuple(hidden.shape)} for labels of "
                f"{self._keep.shape[1] + 1} positions"
            )
        return (hidden[:, :-1][self._keep.to(hidden.device)], *args[1:])

    def __call__(self, outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        import torch

        if self._targets is None:
            raise RuntimeError("the supervised-positions loss was called outside compute_loss")
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        targets = self._targets.to(logits.device)
        if num_items_in_batch is None:
            if targets.numel() == 0:
                return logits.sum() * 0.0  # keeps the graph; nothing to learn in this batch
            return torch.nn.functional.cross_entropy(logits.float(), targets)
        total = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch


def supervised_loss_trainer(loss: SupervisedPositionsLoss) -> type:
    """A Trainer that arms `loss` around each forward pass that computes a loss."""
    from transformers import Trainer

    class SupervisedLossTrainer(Trainer):
        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            labels = inputs.get("labels")
            if labels is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss.arm(labels)
            try:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            finally:
                loss.disarm()

    return SupervisedLossTrainer
