"""Fine-tune a causal LM with transformers + peft: LoRA, QLoRA, DoRA or full.

Writes into the output directory: `adapter/` (PEFT methods), `merged/` (full model with
tokenizer, what export reads), `metrics.json`, and `progress.json` while it runs.
Final directories appear atomically (written as `*.partial`, then renamed).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from maap_trainer.config import TrainerConfig
from maap_trainer.data import IGNORE_INDEX, DatasetSplits, TokenizedExample, load_dataset
from maap_trainer.errors import ConfigError
from maap_trainer.model_prep import prepare_base_model
from maap_trainer.progress import ProgressReport, write_progress

log = logging.getLogger("maap.train")

METRICS_FILE = "metrics.json"


def resolve_dataset_path(cfg: TrainerConfig) -> Path:
    return Path(cfg.dataset.path)


class PaddingCollator:
    """Dynamic padding to the longest row of the batch (labels padded with -100)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n] = torch.tensor(row["input_ids"])
            labels[i, :n] = torch.tensor(row["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def tokenize_splits(
    splits: DatasetSplits, tokenizer: Any, cfg: TrainerConfig
) -> tuple[list[dict[str, list[int]]], list[dict[str, list[int]]], int]:
    from maap_trainer.data import tokenize_example

    truncated = 0

    def encode(rows: list) -> list[dict[str, list[int]]]:
        nonlocal truncated
        out = []
        for example in rows:
            tok: TokenizedExample = tokenize_example(
                example, tokenizer, cfg.training.max_seq_length, cfg.training.assistant_only_loss
            )
            truncated += tok.truncated
            if any(label != IGNORE_INDEX for label in tok.labels):
                out.append({"input_ids": tok.input_ids, "labels": tok.labels})
        return out

    return encode(splits.train), encode(splits.eval), truncated


def _device_settings() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
        return {"use_cpu": False, "bf16": bf16, "fp16": not bf16}
    return {"use_cpu": True, "bf16": False, "fp16": False}


def load_model(cfg: TrainerConfig, base: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    method = cfg.method.type
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if torch.cuda.is_available():
        kwargs["dtype"] = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"],
        )
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    if method == "full":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = cfg.method.lora
    targets: str | list[str] = (
        "all-linear" if lora.target_modules == ["all-linear"] else lora.target_modules
    )
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        use_dora=method == "dora",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, peft_config)
    except ValueError as exc:
        raise ConfigError(f"method.lora.targetModules: {exc}") from None


def _progress_callback(output_dir: Path) -> Any:
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Mirror the Trainer's state into progress.json for the operator and the CLI."""

        def __init__(self) -> None:
            self.started = time.monotonic()
            self.loss: float | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any):
            self.started = time.monotonic()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any):
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any):
            elapsed = max(time.monotonic() - self.started, 1e-6)
            step, total = state.global_step, state.max_steps
            tokens = getattr(state, "num_input_tokens_seen", 0) or 0
            eta = int(elapsed / step * (total - step)) if step else None
            write_progress(
                output_dir,
                ProgressReport(
                    stage="training",
                    step=step,
                    total_steps=total,
                    loss=self.loss,
                    tokens_per_second=round(tokens / elapsed, 1) if tokens else None,
                    eta_seconds=eta,
                ),
            )

    return ProgressCallback()


def _publish(staging: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.rename(staging, final)


def count_parameters(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def run_training(cfg: TrainerConfig) -> dict[str, Any]:
    """Train, evaluate before and after, save adapter + merged model, return the metrics."""
    if cfg.deepspeed.enabled:
        raise ConfigError("deepspeed.enabled: DeepSpeed runs are not supported by this trainer yet")
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_progress(output_dir, ProgressReport(stage="loading", message="checking the data set"))
    splits = load_dataset(
        resolve_dataset_path(cfg), cfg.dataset.format, cfg.dataset.eval_fraction, cfg.training.seed
    )

    import torch
    from transformers import AutoTokenizer, Trainer, TrainingArguments, set_seed

    set_seed(cfg.training.seed)
    write_progress(output_dir, ProgressReport(stage="loading", message="loading the base model"))
    base = prepare_base_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_rows, eval_rows, truncated = tokenize_splits(splits, tokenizer, cfg)
    if not train_rows:
        raise ConfigError("dataset: no training row has a token to learn from after truncation")
    model = load_model(cfg, base)
    trainable, total = count_parameters(model)

    hp = cfg.training
    steps_per_epoch = math.ceil(len(train_rows) / (hp.batch_size * hp.gradient_accumulation_steps))
    args_kwargs: dict[str, Any] = {
        "output_dir": str(output_dir / "checkpoints"),
        "per_device_train_batch_size": hp.batch_size,
        "per_device_eval_batch_size": hp.batch_size,
        "gradient_accumulation_steps": hp.gradient_accumulation_steps,
        "learning_rate": hp.learning_rate,
        "num_train_epochs": hp.epochs,
        "max_steps": hp.max_steps or -1,
        "lr_scheduler_type": hp.lr_scheduler,
        "warmup_steps": hp.warmup_ratio,
        "weight_decay": hp.weight_decay,
        "logging_steps": hp.logging_steps,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "seed": hp.seed,
        "data_seed": hp.seed,
        "remove_unused_columns": False,
        "include_num_input_tokens_seen": "non_padding",
        "disable_tqdm": True,
        "dataloader_pin_memory": False,
        **_device_settings(),
        **hp.extra_args,
    }
    try:
        args = TrainingArguments(**args_kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"training.extraArgs: {exc}") from None
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=eval_rows or None,
        data_collator=PaddingCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[_progress_callback(output_dir)],
    )
    write_progress(output_dir, ProgressReport(stage="evaluating", message="eval loss before"))
    before = trainer.evaluate()["eval_loss"] if eval_rows else None
    started = time.monotonic()
    result = trainer.train()
    runtime = time.monotonic() - started
    write_progress(output_dir, ProgressReport(stage="evaluating", message="eval loss after"))
    after = trainer.evaluate()["eval_loss"] if eval_rows else None

    write_progress(output_dir, ProgressReport(stage="saving", message="saving the model"))
    model = trainer.model
    if cfg.method.type != "full":
        staging = output_dir / "adapter.partial"
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _publish(staging, output_dir / "adapter")
        if cfg.method.type == "qlora":
            # Merge into the full-precision base, not the 4-bit one.
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            base_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
            model = PeftModel.from_pretrained(base_model, output_dir / "adapter")
        model = model.merge_and_unload()
    model = model.to(torch.float32)
    staging = output_dir / "merged.partial"
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    _publish(staging, output_dir / "merged")

    tokens_seen = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)
    metrics = {
        "evalLossBefore": before,
        "evalLossAfter": after,
        "trainLoss": float(result.training_loss),
        "trainRuntimeSeconds": round(runtime, 2),
        "trainTokens": tokens_seen,
        "tokensPerSecond": round(tokens_seen / runtime, 1) if runtime > 0 else None,
        "steps": int(trainer.state.global_step),
        "stepsPerEpoch": steps_per_epoch,
        "trainRows": len(train_rows),
        "evalRows": len(eval_rows),
        "truncatedRows": truncated,
        "datasetFormat": splits.format,
        "trainableParameters": trainable,
        "totalParameters": total,
        "method": cfg.method.type,
        "baseModel": base,
    }
    (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    write_progress(
        output_dir,
        ProgressReport(
            stage="trained",
            step=int(trainer.state.global_step),
            total_steps=int(trainer.state.global_step),
            loss=float(result.training_loss),
        ),
    )
    return metrics
