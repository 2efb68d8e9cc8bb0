"""Fine-tune with transformers + peft: any method, any task, one process or many.

Runs in every rank (see distributed.py). Rank 0 writes into the output directory:
`checkpoints/` while it runs, `adapter/` (PEFT methods), `merged/` (the full model with
tokenizer, what export reads), `metrics.json`, `progress.json` and `ranks/` (what each
rank saw). Final directories appear atomically (written as `*.partial`, then renamed).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

from maap_api.errors import ConfigError, TrainingPreempted
from maap_api.results import (
    METRICS_FILE,
    ArtifactPaths,
    TrainMetrics,
    result_json,
    write_result,
)
from maap_api.stage_config import TrainerConfig

from maap_trainer.fetch import local_dataset_paths
from maap_trainer.model_prep import prepare_base_model
from maap_trainer.progress import ProgressReport, write_progress
from maap_trainer.train import distributed
from maap_trainer.train.artifacts import save_artifacts
from maap_trainer.train.callbacks import (
    RANKS_DIR,
    eval_recorder,
    history_callback,
    peak_memory_recorder,
    progress_callback,
    rank_report,
    read_rank_reports,
    write_rank_report,
)
from maap_trainer.train.checkpoints import (
    CHECKPOINTS_DIR,
    checkpoint_step,
    discard_incomplete,
    marker_callback,
    newest_complete,
)
from maap_trainer.train.data import load_dataset
from maap_trainer.train.deepspeed_config import build_deepspeed_config, zero_stage_of
from maap_trainer.train.loss import SupervisedPositionsLoss, supervised_loss_trainer
from maap_trainer.train.methods import CAUSAL_LM, build_model, count_parameters
from maap_trainer.train.preemption import PreemptionWatch
from maap_trainer.train.tasks import TaskData, prepare_task

log = logging.getLogger("maap.train")

EVAL_BEFORE_FILE = "eval-before.json"


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """AVX512-BF16 or AMX: the CPU multiplies bf16 in hardware (elsewhere it is emulated,
    and slower than fp32)."""
    try:
        flags = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def resolve_precision(
    requested: str, on_gpu: bool, deepspeed: bool = False, cpu_bf16: bool | None = None
) -> str:
    """auto: bf16 where the GPU has it, else fp16; on CPU, bf16 autocast where the CPU
    multiplies bf16 natively (fp32 master weights; see bench/RESULTS.md), else fp32.
    DeepSpeed on CPU stays fp32: its bf16 mode keeps bf16 weights."""
    if cpu_bf16 is None:
        cpu_bf16 = not on_gpu and cpu_has_native_bf16()
    if requested == "auto":
        if not on_gpu:
            return "bf16" if cpu_bf16 and not deepspeed else "fp32"
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if on_gpu or requested == "fp32":
        return requested
    if requested == "bf16" and cpu_bf16 and not deepspeed:
        return requested
    if requested == "bf16" and cpu_bf16:
        why = "under DeepSpeed on CPU is not supported (DeepSpeed's bf16 keeps bf16 weights)"
    elif requested == "bf16":
        why = "needs a GPU or a CPU with AVX512-BF16/AMX"
    else:
        why = "needs a GPU"
    raise ConfigError(f"training.precision: {requested} {why}; use auto or fp32 on CPU")


def training_arguments(
    cfg: TrainerConfig,
    output_dir: Path,
    precision: str,
    on_gpu: bool,
    ds_config: dict[str, Any] | None,
    configured_state: bool,
    eval_on_start: bool,
) -> Any:
    from transformers import TrainingArguments

    hp = cfg.training
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir / CHECKPOINTS_DIR),
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
        "save_strategy": "steps",
        "save_steps": hp.checkpoint_steps,
        "save_total_limit": hp.checkpoints_to_keep,
        "eval_strategy": "no",
        # Evaluating inside train() runs after DeepSpeed has wrapped the model, which works
        # for every ZeRO stage (a bare evaluate() first works for ZeRO-3 only).
        "eval_on_start": eval_on_start,
        "report_to": "none",
        "seed": hp.seed,
        "data_seed": hp.seed,
        "remove_unused_columns": False,
        "label_names": ["labels"],
        "include_num_input_tokens_seen": "non_padding",
        # Batches of rows of similar length (shuffled megabatches, sorted within): far less
        # padding to compute than random batches (see bench/RESULTS.md). extraArgs may undo it.
        "train_sampling_strategy": "group_by_length",
        "disable_tqdm": True,
        "dataloader_pin_memory": on_gpu,
        "use_cpu": not on_gpu,
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
    }
    if distributed.world_size() > 1:
        kwargs["ddp_backend"] = "nccl" if on_gpu else "gloo"
    if ds_config is not None:
        kwargs["deepspeed"] = ds_config
    if configured_state:
        kwargs["accelerator_config"] = {"use_configured_state": True}
    kwargs.update(hp.extra_args)
    try:
        return TrainingArguments(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"training.extraArgs: {exc}") from None


def _eval_summary(metrics: dict[str, float] | None) -> dict[str, float | None]:
    metrics = metrics or {}
    return {
        "loss": metrics.get("eval_loss"),
        "accuracy": metrics.get("eval_accuracy"),
        "f1": metrics.get("eval_f1"),
    }


def run_training(cfg: TrainerConfig) -> dict[str, Any]:
    """Train, evaluate before and after, save adapter + merged model, return the metrics.

    SIGTERM (a pod being stopped) saves a checkpoint at the next step boundary and raises
    TrainingPreempted; the next run resumes from it (preemption.py)."""
    watch = PreemptionWatch().install()
    try:
        return _run_training(cfg, watch)
    finally:
        watch.uninstall()


def _run_training(cfg: TrainerConfig, watch: PreemptionWatch) -> dict[str, Any]:
    output_dir = Path(cfg.output_dir)
    main = distributed.rank() == 0
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_progress(output_dir, ProgressReport(stage="loading", message="checking the data"))
    train_path, eval_path = local_dataset_paths(cfg)  # a remote file's fetched copy
    splits = load_dataset(
        train_path, cfg.dataset.format, cfg.dataset.eval_fraction, cfg.training.seed, eval_path
    )
    if cfg.training.task != "causal-lm" and splits.format not in ("classification", "ner"):
        raise ConfigError(
            f"dataset: {cfg.dataset.path} has {splits.format} rows; training.task "
            f"{cfg.training.task} needs `text`/`label` or `tokens`/`tags` rows"
        )

    import torch
    from transformers import AutoTokenizer, Trainer, set_seed

    on_gpu = torch.cuda.is_available()
    precision = resolve_precision(cfg.training.precision, on_gpu, cfg.deepspeed.enabled)
    # On CPU, bf16 is autocast over fp32 weights, so the merged model keeps full precision.
    weights = precision if on_gpu else "fp32"
    if cfg.method.type != "full" and cfg.method.lora.init == "loftq" and not on_gpu:
        # peft computes the LoftQ decomposition on a CUDA (or XPU) device, nowhere else.
        raise ConfigError("method.lora.init: loftq needs a GPU; on CPU use pissa or default")
    set_seed(cfg.training.seed)
    if main:
        write_progress(output_dir, ProgressReport(stage="loading", message="loading the model"))
    base = prepare_base_model(cfg.model, cfg.hub, cfg.s3)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    data = prepare_task(cfg, splits, tokenizer)
    if not data.train:
        raise ConfigError("dataset: no training row has a token to learn from after truncation")

    ckpt_root = output_dir / CHECKPOINTS_DIR
    resume_from = newest_complete(ckpt_root) if cfg.training.resume else None
    if main:
        shutil.rmtree(output_dir / RANKS_DIR, ignore_errors=True)  # reports of an earlier run
        if cfg.training.resume:
            discard_incomplete(ckpt_root)
    cached_before = _read_eval_before(ckpt_root) if resume_from else None
    ds_config = build_deepspeed_config(cfg.deepspeed, on_gpu) if cfg.deepspeed.enabled else None
    configured = distributed.configure_worker_state(ds_config is not None, on_gpu)
    # Arguments before the model: under ZeRO-3 the model is then partitioned as it loads.
    args = training_arguments(
        cfg,
        output_dir,
        precision,
        on_gpu,
        ds_config,
        configured,
        eval_on_start=bool(data.eval) and cached_before is None,
    )
    model = build_model(cfg, base, data.head, weights)
    trainable, total = count_parameters(model)
    if main and cfg.method.lora.init == "pissa" and cfg.method.type != "full":
        _save_initial_adapter(model, ckpt_root)

    # Eval before training runs once per job: a resumed run reuses the first run's.
    recorder = eval_recorder(ckpt_root / EVAL_BEFORE_FILE)
    memory = peak_memory_recorder()
    # Causal LM: the output head and the loss run on the labelled positions only (loss.py).
    supervised = SupervisedPositionsLoss() if data.head is CAUSAL_LM else None
    trainer_class = Trainer
    if supervised is not None:
        supervised.attach(model)
        trainer_class = supervised_loss_trainer(supervised)
    trainer = trainer_class(
        model=model,
        compute_loss_func=supervised,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval or None,
        data_collator=data.collator,
        processing_class=tokenizer,
        compute_metrics=data.compute_metrics,
        callbacks=[
            progress_callback(output_dir),
            marker_callback(),
            history_callback(output_dir),  # after the marker: it records complete ones
            recorder,
            memory,
            watch.callback(),
        ],
    )
    world = int(trainer.args.world_size)
    if world != distributed.world_size():
        raise RuntimeError(
            f"the Trainer sees a world of {world} processes but {distributed.world_size()} "
            "were started; ranks would not shard"
        )
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if watch.stopped_at_step is not None:
        step = watch.stopped_at_step
        if main:
            write_progress(
                output_dir,
                ProgressReport(
                    stage="preempted",
                    step=step,
                    total_steps=int(trainer.state.max_steps),
                    message=f"stopped by SIGTERM; checkpoint-{step} saved",
                ),
            )
        raise TrainingPreempted(
            f"preempted at step {step}: checkpoint-{step} saved; the next pod resumes from it"
        )
    runtime = time.monotonic() - (recorder.train_started or time.monotonic())
    before = cached_before or (recorder.history[0] if recorder.history else None)
    if main:
        write_progress(output_dir, _after_training(trainer, "evaluating", "eval after"))
    after = trainer.evaluate() if data.eval else None
    write_rank_report(output_dir, rank_report(trainer, distributed.rank(), world))
    distributed.barrier()  # every rank's report is on disk before rank 0 reads them

    if main:
        write_progress(output_dir, _after_training(trainer, "saving", "saving the model"))
    save_artifacts(trainer, cfg, base, data.head, tokenizer, output_dir, weights, ds_config)
    if not main:
        return {}
    metrics = _metrics(
        cfg, trainer, result, data, splits.format, base, runtime, before, after, trainable, total
    )
    metrics["peakTrainingMemoryBytes"] = memory.peak_bytes
    metrics["peakTrainingMemoryKind"] = memory.kind
    metrics["resumedFromStep"] = checkpoint_step(resume_from) if resume_from else None
    metrics["distributed"] = {
        "worldSize": world,
        "deepspeed": ds_config is not None,
        "zeroStage": zero_stage_of(ds_config) if ds_config else None,
        "backend": "nccl" if on_gpu else "gloo",
        "precision": precision,
        "ranks": read_rank_reports(output_dir),
    }
    typed = TrainMetrics.model_validate(metrics)
    write_result(output_dir / METRICS_FILE, typed)
    steps = int(trainer.state.global_step)
    write_progress(
        output_dir,
        ProgressReport(
            stage="trained",
            step=steps,
            total_steps=steps,
            loss=typed.train_loss,
            resumed_from_step=typed.resumed_from_step,
            metrics=typed.summary(),
            artifacts=ArtifactPaths.found_in(output_dir, cfg.job_name),
        ),
    )
    return result_json(typed)


def _after_training(trainer: Any, stage: str, message: str) -> ProgressReport:
    """A report after the loop that keeps the step count (status.progress must not fall
    back to step 0 while the model is evaluated and saved)."""
    step = int(trainer.state.global_step)
    return ProgressReport(stage=stage, step=step, total_steps=step, message=message)


def _metrics(
    cfg: TrainerConfig,
    trainer: Any,
    result: Any,
    data: TaskData,
    fmt: str,
    base: str,
    runtime: float,
    before: dict[str, float] | None,
    after: dict[str, float] | None,
    trainable: int,
    total: int,
) -> dict[str, Any]:
    hp = cfg.training
    batch = hp.batch_size * hp.gradient_accumulation_steps * int(trainer.args.world_size)
    tokens = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)
    steps = int(trainer.state.global_step)
    b, a = _eval_summary(before), _eval_summary(after)
    metrics: dict[str, Any] = {
        "task": hp.task,
        "method": cfg.method.type,
        "evalLossBefore": b["loss"],
        "evalLossAfter": a["loss"],
        "trainLoss": float(result.training_loss),
        "trainRuntimeSeconds": round(runtime, 2),
        "secondsPerStep": round(runtime / steps, 3) if steps else None,
        "trainTokens": tokens,
        "tokensPerSecond": round(tokens / runtime, 1) if runtime > 0 and tokens else None,
        "steps": steps,
        "stepsPerEpoch": math.ceil(len(data.train) / batch),
        "trainRows": len(data.train),
        "evalRows": len(data.eval),
        "datasetFormat": fmt,
        "trainableParameters": trainable,
        "totalParameters": total,
        "baseModel": base,
        **data.stats,
    }
    if hp.task != "causal-lm":
        metrics.update(
            {
                "evalAccuracyBefore": b["accuracy"],
                "evalAccuracyAfter": a["accuracy"],
                "evalF1Before": b["f1"],
                "evalF1After": a["f1"],
            }
        )
    return metrics


def _read_eval_before(ckpt_root: Path) -> dict[str, float] | None:
    try:
        return json.loads((ckpt_root / EVAL_BEFORE_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None


def _save_initial_adapter(model: Any, ckpt_root: Path) -> None:
    """PiSSA moves the principal components out of the base weights into the adapter.
    Keeping the adapter as initialised lets the final one be converted to a plain LoRA
    on the untouched base model (see artifacts.py)."""
    from maap_trainer.train.artifacts import PISSA_INIT_DIR

    target = ckpt_root / PISSA_INIT_DIR
    if (target / "adapter_config.json").is_file():
        return
    config = model.peft_config["default"]
    original, config.init_lora_weights = config.init_lora_weights, True
    try:
        model.save_pretrained(target)
    finally:
        config.init_lora_weights = original
