"""The baseline: a plain transformers Trainer + PEFT LoRA script, as a competent user
writes it and as common operators run it (dynamic padding, no packing, fp32 on CPU, the
model's own loss). It imports nothing from maap.

    python bench/baselines/plain_trainer_peft.py --model DIR --train F.jsonl --eval F.jsonl \
        --rows 96 --out result.json

Chat rows are tokenized with the model's chat template and the loss is on the assistant
turn only (the prompt's tokens are labelled -100), the same rows maap trains on.
Prints/writes tokens per second (non-padding input tokens over the training loop's wall
time), the training loop's peak resident memory and the held-out loss after training.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)


def tokenize(tokenizer, messages: list[dict[str, str]], max_length: int) -> dict[str, list[int]]:
    prompt = tokenizer.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True
    )
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_length]
    labels = [-100] * len(prompt_ids) + ids[len(prompt_ids) :]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels[: len(ids)]}


def read_rows(path: Path, tokenizer, limit: int | None, max_length: int) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [tokenize(tokenizer, row["messages"], max_length) for row in lines[:limit]]


class TrainingLoopMemory(TrainerCallback):
    """Peak resident memory of the training loop: VmHWM, reset when training starts."""

    peak_bytes = None

    def on_train_begin(self, args, state, control, **kwargs):
        Path("/proc/self/clear_refs").write_text("5")

    def on_train_end(self, args, state, control, **kwargs):
        status = Path("/proc/self/status").read_text().splitlines()
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
        self.peak_bytes = kib * 1024


class LoopTimer(TrainerCallback):
    started = ended = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()

    def on_train_end(self, args, state, control, **kwargs):
        self.ended = time.monotonic()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--eval", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train = read_rows(args.train, tokenizer, args.rows, args.max_length)
    held = read_rows(args.eval, tokenizer, None, args.max_length)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(
            r=args.rank,
            lora_alpha=args.alpha,
            lora_dropout=0.05,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    training_args = TrainingArguments(
        output_dir=str(args.out.parent / "baseline-checkpoints"),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        num_train_epochs=1,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        seed=42,
        use_cpu=not torch.cuda.is_available(),
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
    )
    memory, timer = TrainingLoopMemory(), LoopTimer()
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=held,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        callbacks=[memory, timer],
    )
    trainer.train()
    seconds = timer.ended - timer.started
    tokens = int(trainer.state.num_input_tokens_seen)
    result = {
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokensPerSecond": round(tokens / seconds, 1),
        "peakTrainingMemoryBytes": memory.peak_bytes,
        "evalLossAfter": trainer.evaluate()["eval_loss"],
        "steps": int(trainer.state.global_step),
        "threads": torch.get_num_threads(),
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
