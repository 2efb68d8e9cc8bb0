"""The contract between control plane and data plane.

These models are embedded in the FineTuneJob spec (the CRD is generated from them) and
handed to the trainer, exporter and server as one JSON file. They import pydantic only,
so the operator can use them without pulling in torch. Rules across fields live in one
table (maap_api.rules), which pydantic and the CRD's CEL rules both enforce.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from maap_api.camel import CamelModel
from maap_api.presets import PRESETS
from maap_api.sources import DATASET_FORMS, MAX_LOCATION_LENGTH, MODEL_FORMS
from maap_api.storage_access import HubAccess, OutputSpec, S3Access

Method = Literal["lora", "qlora", "dora", "full"]
Task = Literal["causal-lm", "text-classification", "token-classification"]
DatasetFormat = Literal[
    "auto", "chat", "alpaca", "prompt-completion", "text", "classification", "ner"
]
LoraInit = Literal["default", "gaussian", "pissa", "loftq"]
TrainPrecision = Literal["auto", "fp32", "bf16", "fp16"]
Precision = Literal["fp32", "fp16", "int8", "int4"]
ExecutionProvider = Literal["cpu", "cuda"]
QuantAlgorithm = Literal["auto", "default", "k_quant", "k_quant_mixed"]
PresetName = Literal[tuple(sorted(PRESETS))]  # type: ignore[valid-type]


class ModelSource(CamelModel):
    """The base model: a preset from the catalogue, or a checkpoint directory."""

    rules_section = "model"

    preset: PresetName | None = Field(
        default=None, description="Name of a model preset, e.g. smollm2-135m-instruct."
    )
    path: str | None = Field(
        default=None,
        description="The base checkpoint (config.json, weights, tokenizer): "
        + MODEL_FORMS
        + ". A remote model is fetched once into the model cache.",
        min_length=1,
        max_length=MAX_LOCATION_LENGTH,
    )

    @property
    def display_name(self) -> str:
        return self.preset or self.path or ""


SHA256 = r"^[0-9a-f]{64}$"


class DatasetSpec(CamelModel):
    rules_section = "dataset"

    path: str = Field(
        min_length=1,
        max_length=MAX_LOCATION_LENGTH,
        description="Data file (.jsonl, .json array, .csv or .parquet): "
        + DATASET_FORMS
        + ". Relative paths resolve against the manifest's directory for `maap run`; remote "
        "files are fetched and validated before training.",
    )
    sha256: str | None = Field(
        default=None, pattern=SHA256, description="Expected SHA-256 of the file at path (hex)."
    )
    split: str = Field(
        default="train",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="For an hf://datasets/ repository without a file: the split whose files "
        "(e.g. data/train-*.parquet, train.jsonl) are the training rows.",
    )
    format: DatasetFormat = Field(
        default="auto",
        description="Row format: chat `messages`, alpaca `instruction`/`input`/`output`, "
        "`prompt`/`completion`, plain `text`; `text`/`label` (classification) or "
        "`tokens`/`tags` (ner); or auto-detected from the first row.",
    )
    eval_fraction: float = Field(
        default=0.1,
        ge=0.0,
        le=0.5,
        description="Fraction of rows held out for evaluation (at least one row when > 0); "
        "ignored when evalPath is set.",
    )
    eval_path: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_LOCATION_LENGTH,
        description="A separate evaluation file in the same format and forms as path "
        "(relative paths resolve against the directory of path).",
    )
    eval_sha256: str | None = Field(
        default=None, pattern=SHA256, description="Expected SHA-256 of the file at evalPath."
    )


class LoraSpec(CamelModel):
    rules_section = "method.lora"

    r: int = Field(default=16, ge=1, le=1024, description="Adapter rank.")
    alpha: int = Field(default=32, ge=1, description="Adapter scaling (lora_alpha).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        description="Module names to adapt; `all-linear` adapts every linear layer but the head.",
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="Modules trained in full and saved with the adapter (e.g. lm_head, "
        "embed_tokens). Classification heads are added automatically.",
    )
    rslora: bool = Field(
        default=False, description="Rank-stabilised LoRA: scale by alpha/sqrt(r), not alpha/r."
    )
    init: LoraInit = Field(
        default="default",
        description="Adapter initialisation: default (B=0), gaussian, pissa (principal "
        "singular vectors of each weight, which rewrites the base weights) or loftq "
        "(quantisation-aware, 4-bit).",
    )


class MethodSpec(CamelModel):
    rules_section = "method"

    type: Method = Field(default="lora", description="lora | qlora | dora | full.")
    lora: LoraSpec = Field(default_factory=LoraSpec)


class TrainingSpec(CamelModel):
    rules_section = "training"

    task: Task = Field(
        default="causal-lm",
        description="causal-lm (generation: chat, QA, creative), text-classification or "
        "token-classification (NER) on an encoder.",
    )
    epochs: float = Field(default=2.0, gt=0, description="Passes over the training split.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimizer steps (overrides epochs)."
    )
    learning_rate: float = Field(default=2e-4, gt=0, lt=1)
    batch_size: int = Field(default=8, ge=1, description="Per-device batch size.")
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_seq_length: int = Field(default=512, ge=16, description="Longer rows are truncated.")
    packing: bool = Field(
        default=False,
        description="Pack several rows into each sequence of maxSeqLength tokens (position ids "
        "restart per row, so attention never crosses rows).",
    )
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    precision: TrainPrecision = Field(
        default="auto",
        description="auto: bf16 on GPUs that have it, else fp16 on GPU; on CPU, bf16 autocast "
        "over fp32 weights where the CPU has AVX512-BF16/AMX (not under DeepSpeed), else fp32.",
    )
    seed: int = 42
    logging_steps: int = Field(default=5, ge=1)
    checkpoint_steps: int = Field(
        default=100,
        ge=1,
        description="Save a checkpoint into the artifact directory every N optimizer steps.",
    )
    checkpoints_to_keep: int = Field(
        default=2,
        ge=2,
        le=100,
        description="Newest checkpoints kept; at least 2, so a crash while saving one leaves "
        "the previous one complete.",
    )
    resume: bool = Field(
        default=True,
        description="On restart, resume from the newest complete checkpoint (pods get "
        "rescheduled).",
    )
    assistant_only_loss: bool = Field(
        default=True, description="Compute the loss on assistant/completion tokens only."
    )
    extra_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed through to transformers TrainingArguments as is.",
    )


class DeepSpeedSpec(CamelModel):
    rules_section = "deepspeed"

    enabled: bool = False
    zero_stage: Literal[0, 1, 2, 3] = Field(
        default=2,
        description="0: plain data parallel; 1: shard optimizer state; 2: + gradients; "
        "3: + parameters.",
    )
    offload_optimizer: bool = Field(
        default=False, description="Keep optimizer state (and the step) on CPU."
    )
    offload_parameters: bool = Field(
        default=False, description="Keep partitioned parameters on CPU (ZeRO-3)."
    )
    config: dict[str, Any] | None = Field(
        default=None,
        description="A raw DeepSpeed config used instead of the generated one ('auto' values "
        "are filled in from training); excludes zeroStage/offload*.",
    )


class ParitySpec(CamelModel):
    """The gate after export: PyTorch (merged model) against ONNX on the same inputs."""

    enabled: bool = Field(
        default=True, description="Fail the export when ONNX and PyTorch disagree too much."
    )
    prompts: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="User messages decoded greedily by both models (default: 8 built-in "
        "general questions).",
    )
    max_new_tokens: int = Field(
        default=32, ge=1, le=512, description="Greedy tokens generated per prompt."
    )
    min_token_agreement: float = Field(
        default=0.7,
        ge=0.0,
        le=1.0,
        description="int8/int4: least fraction of PyTorch's greedy tokens that ONNX also "
        "predicts (teacher-forced along PyTorch's continuation). fp32 must match token for "
        "token.",
    )
    max_perplexity_increase: float = Field(
        default=0.25,
        ge=0.0,
        description="int8/int4: largest relative perplexity increase on the eval split "
        "(0.25: at most 25% above PyTorch's).",
    )
    eval_rows: int = Field(
        default=32, ge=1, le=10000, description="Eval-split rows used for the perplexity."
    )


class ExportSpec(CamelModel):
    rules_section = "export"

    enabled: bool = True
    precision: Precision = Field(
        default="int4", description="ONNX weight precision: fp32, fp16 (CUDA only), int8, int4."
    )
    execution_provider: ExecutionProvider = Field(
        default="cpu", description="Where the exported model runs: cpu or cuda."
    )
    quantization: QuantAlgorithm = Field(
        default="auto",
        description="Weight-only quantization recipe for int4/int8: default (round to "
        "nearest), k_quant, k_quant_mixed (k_quant with the most sensitive layers and the "
        "head in int8), or auto (k_quant_mixed for int4, default for int8).",
    )
    adapter: bool = Field(
        default=False,
        description="Also export the LoRA adapter as an ONNX Runtime adapter file plus a base "
        "model with LoRA inputs, so one base model can serve several fine-tunes (lora and "
        "qlora only).",
    )
    parity: ParitySpec = Field(default_factory=ParitySpec)


class ServingOptions(CamelModel):
    """What a user may set about serving, in the cluster API and in the pod's config alike."""

    enabled: bool = True
    port: int = Field(default=8000, ge=1, le=65535)
    max_tokens_limit: int = Field(
        default=1024, ge=1, description="Largest max_tokens a request may ask for."
    )
    max_batch_size: int = Field(
        default=8, ge=1, le=256, description="Requests decoded together in one batch."
    )
    max_context_length: int | None = Field(
        default=None,
        ge=16,
        le=1048576,
        description="Longest prompt plus answer a request may reach, in tokens. The server "
        "allocates each batch's KV cache for this many tokens per request, so it sets memory "
        "and time to first token. At most the model's context length; unset: 4096, or the "
        "model's context length if that is shorter.",
    )
    max_queue: int = Field(
        default=64,
        ge=0,
        le=100000,
        description="Requests that may wait for a batch slot; beyond that the server answers 429.",
    )
    shutdown_grace_seconds: int = Field(
        default=30,
        ge=0,
        le=3600,
        description="On SIGTERM, how long running requests may take to finish.",
    )


class ServingConfig(ServingOptions):
    """The server's own config: the options plus where its bearer token comes from.

    Not part of the cluster API: the operator sets the token source from serving.auth."""

    rules_section = "serving"
    rules_plane = "pod"

    auth_token_env: str | None = Field(
        default=None,
        min_length=1,
        description="Name of an environment variable holding the bearer token clients must "
        "send (Authorization: Bearer ...).",
    )
    auth_token_file: str | None = Field(
        default=None,
        min_length=1,
        description="File holding the bearer token clients must send (e.g. a mounted Secret).",
    )


class TrainerConfig(CamelModel):
    """Everything one pipeline run needs; written to `config.json` for each stage."""

    rules_section = ""
    rules_plane = "pod"

    job_name: str
    model: ModelSource
    dataset: DatasetSpec
    method: MethodSpec = Field(default_factory=MethodSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    s3: S3Access = Field(default_factory=S3Access)
    hub: HubAccess = Field(default_factory=HubAccess)
    output: OutputSpec = Field(default_factory=OutputSpec)
    output_dir: str = Field(description="Where every stage writes its artifacts.")
    inputs_dir: str | None = Field(
        default=None,
        description="Where the fetch stage leaves remote data files (default: "
        "<outputDir>/inputs); the training stage reads them there.",
    )

    @property
    def fetched_inputs_dir(self) -> Path:
        return Path(self.inputs_dir) if self.inputs_dir else Path(self.output_dir) / "inputs"


def load_trainer_config(path: Path) -> TrainerConfig:
    """A stage's config.json, validated; any problem is one ConfigError line naming it."""
    from maap_api.errors import ConfigError
    from maap_api.field_errors import format_validation_error

    try:
        return TrainerConfig.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from None
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc, TrainerConfig)}") from None
