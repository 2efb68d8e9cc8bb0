"""The cross-field rules of the FineTuneJob API: one table, two enforcers.

Each rule is written once, here, with a Python predicate (pydantic runs it through the one
generic validator every section model has, see `CamelModel`) and a CEL expression (the
CRD generator, maap.crd, attaches it to the same section of the schema). Both report the
same field and the same message, so `maap validate` and `kubectl apply` agree.

CEL runs on the object the API server stores, where every default is filled in, but the
server also checks each section's own `default: {}` against that section's rules when the
CRD is installed: a section rule must hold when its fields are absent (guard every field
with `has()`; an absent field stands for its default). Rules at the spec root see only
stored objects, so there only fields without a default (model.preset) need `has()`. Messages
start with the field they name (from the spec root); `{x.y}` inserts the value of a field
relative to the rule's section (CEL builds the same text with messageExpression): only an
enum field that is set whenever the rule fails can be inserted.

Pydantic and the standard library only, so the control plane and the data plane share it.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from maap_api.presets import PRESETS
from maap_api.rule import RULE_ERROR, Plane, Rule, _cel_literal, value_at
from maap_api.source_rules import SOURCE_RULES

TASK_FORMATS: dict[str, list[str]] = {
    "causal-lm": ["auto", "chat", "alpaca", "prompt-completion", "text"],
    "text-classification": ["auto", "classification"],
    "token-classification": ["auto", "ner"],
}
ENCODER_PRESETS = sorted(name for name, p in PRESETS.items() if p.kind == "encoder")
# lora.init values that rewrite or decompose the base weights.
REWRITING_INITS = ["pissa", "loftq"]
ADAPTER_METHODS = ["lora", "qlora"]
# DeepSpeed fields that a raw deepspeed.config replaces.
_GENERATED_DEEPSPEED = ("zeroStage", "offloadOptimizer", "offloadParameters")


def changed_fields(model: BaseModel, names: Iterable[str] | None = None) -> list[str]:
    """camelCase names of the fields (all, or those named) that differ from their default."""
    fields = type(model).model_fields
    wanted = set(names) if names is not None else None
    return [
        info.alias or name
        for name, info in fields.items()
        if (wanted is None or (info.alias or name) in wanted)
        and getattr(model, name) != info.get_default(call_default_factory=True)
    ]


def _defaults_cel(model_name: str, var: str, names: Iterable[str] | None = None) -> str:
    """CEL: every field (or those named) of `var` still holds its default.

    Built from the model's own defaults when the CRD is generated, so the rule cannot
    drift from them; lists compare by size and element (cheap under CEL's cost limit)."""
    import maap_api.stage_config as config  # the models import this module

    model = getattr(config, model_name)
    wanted = set(names) if names is not None else None
    terms = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        if wanted is not None and key not in wanted:
            continue
        default = info.get_default(call_default_factory=True)
        path = f"{var}.{key}"
        if isinstance(default, list):
            same = [f"size({path}) == {len(default)}"]
            same += [f"{path}[{i}] == {_cel_literal(v)}" for i, v in enumerate(default)]
            term = " && ".join(same)
        elif isinstance(default, bool):
            term = path if default else f"!{path}"
        else:
            term = f"{path} == {_cel_literal(default)}"
        terms.append(f"(!has({path}) || {term})")  # absent reads as the default
    return " && ".join(terms)


RULES: list[Rule] = [
    # -- one section ----------------------------------------------------------------------
    Rule(
        name="model-source",
        section="model",
        field="model",
        message="model: set exactly one of model.preset or model.path",
        check=lambda m: (m.preset is None) != (m.path is None),
        cel="has(self.preset) != has(self.path)",
        example={"model": {"preset": "smollm2-135m-instruct", "path": "/models/mine"}},
        reason="FieldValueInvalid",
    ),
    Rule(
        name="loftq-rslora",
        section="method.lora",
        field="method.lora.rslora",
        message="method.lora.rslora: LoftQ initialisation assumes the standard alpha/r "
        "scaling; drop rslora or pick another init",
        check=lambda m: not (m.init == "loftq" and m.rslora),
        cel="!has(self.init) || self.init != 'loftq' || !has(self.rslora) || !self.rslora",
        example={"method": {"lora": {"init": "loftq", "rslora": True}}},
    ),
    Rule(
        name="qlora-init",
        section="method",
        field="method.lora.init",
        message="method.lora.init: {lora.init} rewrites the base weights, but qlora keeps "
        "them in 4 bits; use type lora with init {lora.init} (loftq is itself a 4-bit-aware "
        "initialisation)",
        check=lambda m: not (m.type == "qlora" and m.lora.init in REWRITING_INITS),
        cel="!has(self.type) || self.type != 'qlora' || !has(self.lora) || !has(self.lora.init) "
        f"|| !(self.lora.init in {_cel_literal(REWRITING_INITS)})",
        example={"method": {"type": "qlora", "lora": {"init": "pissa"}}},
    ),
    Rule(
        name="full-without-adapter",
        section="method",
        field="method.lora",
        message="method.lora: full fine-tuning trains every weight, so adapter settings do "
        "not apply; leave method.lora at its defaults or pick type lora, qlora or dora",
        check=lambda m: m.type != "full" or not changed_fields(m.lora),
        cel=lambda: (
            "!has(self.type) || self.type != 'full' || !has(self.lora) || "
            f"({_defaults_cel('LoraSpec', 'self.lora')})"
        ),
        example={"method": {"type": "full", "lora": {"r": 8}}},
    ),
    Rule(
        name="packing-causal-lm",
        section="training",
        field="training.packing",
        message="training.packing: packing concatenates token sequences for causal-lm; task "
        "{task} classifies each row on its own",
        check=lambda m: not m.packing or m.task == "causal-lm",
        cel="!has(self.packing) || !self.packing || !has(self.task) || self.task == 'causal-lm'",
        example={
            "training": {"task": "text-classification", "packing": True},
            "dataset": {"format": "classification"},
        },
    ),
    Rule(
        name="deepspeed-raw-config",
        section="deepspeed",
        field="deepspeed.config",
        message="deepspeed.config: a raw DeepSpeed config replaces the generated one; leave "
        "zeroStage, offloadOptimizer and offloadParameters at their defaults, or drop config",
        check=lambda m: m.config is None or not changed_fields(m, _GENERATED_DEEPSPEED),
        cel=lambda: (
            "!has(self.config) || ("
            + _defaults_cel("DeepSpeedSpec", "self", _GENERATED_DEEPSPEED)
            + ")"
        ),
        example={
            "deepspeed": {
                "enabled": True,
                "zeroStage": 3,
                "config": {"zero_optimization": {"stage": 3}},
            }
        },
    ),
    Rule(
        name="offload-parameters-zero3",
        section="deepspeed",
        field="deepspeed.offloadParameters",
        message="deepspeed.offloadParameters: needs zeroStage 3 (got {zeroStage}); only "
        "ZeRO-3 partitions parameters",
        check=lambda m: not m.offload_parameters or m.zero_stage == 3,
        cel="!has(self.offloadParameters) || !self.offloadParameters "
        "|| (has(self.zeroStage) && self.zeroStage == 3)",
        example={"deepspeed": {"enabled": True, "zeroStage": 2, "offloadParameters": True}},
    ),
    Rule(
        name="offload-optimizer-zero",
        section="deepspeed",
        field="deepspeed.offloadOptimizer",
        message="deepspeed.offloadOptimizer: needs zeroStage 1, 2 or 3 (got 0); ZeRO-0 keeps "
        "no optimizer state to offload",
        check=lambda m: not m.offload_optimizer or m.zero_stage >= 1,
        cel="!has(self.offloadOptimizer) || !self.offloadOptimizer || !has(self.zeroStage) "
        "|| self.zeroStage >= 1",
        example={"deepspeed": {"enabled": True, "zeroStage": 0, "offloadOptimizer": True}},
    ),
    Rule(
        name="fp16-cuda",
        section="export",
        field="export.precision",
        message="export.precision: fp16 needs executionProvider cuda; the ONNX Runtime GenAI "
        "builder builds fp16 for CUDA only (on cpu use fp32, int8 or int4)",
        check=lambda m: m.precision != "fp16" or m.execution_provider == "cuda",
        cel="!has(self.precision) || self.precision != 'fp16' "
        "|| (has(self.executionProvider) && self.executionProvider == 'cuda')",
        example={"export": {"precision": "fp16"}},
    ),
    Rule(
        name="quantization-integer",
        section="export",
        field="export.quantization",
        message="export.quantization: {quantization} applies to precision int4 or int8, not "
        "{precision}",
        check=lambda m: m.quantization == "auto" or m.precision in ("int4", "int8"),
        cel="!has(self.quantization) || self.quantization == 'auto' || !has(self.precision) "
        "|| self.precision in ['int4', 'int8']",
        example={"export": {"precision": "fp32", "quantization": "k_quant"}},
    ),
    Rule(
        name="one-token-source",
        section="serving",
        field="serving.authTokenFile",
        message="serving.authTokenFile: set at most one of authTokenEnv or authTokenFile",
        check=lambda m: m.auth_token_env is None or m.auth_token_file is None,
        cel=None,
        example={"serving": {"authTokenEnv": "TOKEN", "authTokenFile": "/run/token"}},
        plane="pod",
    ),
    # -- across sections (the spec root; TrainerConfig has the same sections) -------------
    Rule(
        name="format-fits-task",
        section="",
        field="dataset.format",
        message="dataset.format: {dataset.format} rows do not fit training.task "
        "{training.task} (causal-lm takes auto, chat, alpaca, prompt-completion or text; "
        "text-classification auto or classification; token-classification auto or ner)",
        check=lambda m: m.dataset.format in TASK_FORMATS[m.training.task],
        cel=f"self.dataset.format in {_cel_literal(TASK_FORMATS)}[self.training.task]",
        example={"training": {"task": "token-classification"}, "dataset": {"format": "chat"}},
    ),
    Rule(
        name="encoder-task",
        section="",
        field="training.task",
        message="training.task: model.preset {model.preset} is an encoder, which cannot "
        "generate text; use task text-classification or token-classification",
        check=lambda m: m.model.preset not in ENCODER_PRESETS or m.training.task != "causal-lm",
        cel=f"!has(self.model.preset) || !(self.model.preset in {_cel_literal(ENCODER_PRESETS)})"
        " || self.training.task != 'causal-lm'",
        example={"model": {"preset": ENCODER_PRESETS[0]}},
    ),
    Rule(
        name="qlora-deepspeed",
        section="",
        field="method.type",
        message="method.type: qlora keeps frozen 4-bit bitsandbytes weights that DeepSpeed "
        "ZeRO cannot partition or cast; use type lora or dora with deepspeed, or disable it",
        check=lambda m: not (m.deepspeed.enabled and m.method.type == "qlora"),
        cel="!self.deepspeed.enabled || self.method.type != 'qlora'",
        example={"method": {"type": "qlora"}, "deepspeed": {"enabled": True}},
    ),
    Rule(
        name="rewriting-init-zero3",
        section="",
        field="method.lora.init",
        message="method.lora.init: {method.lora.init} decomposes each full weight matrix, "
        "which ZeRO-3 partitions across ranks; use deepspeed.zeroStage 0-2 or init default",
        check=lambda m: (
            not (
                m.deepspeed.enabled
                and m.deepspeed.zero_stage == 3
                and m.method.lora.init in REWRITING_INITS
            )
        ),
        cel="!(self.deepspeed.enabled && self.deepspeed.zeroStage == 3 && self.method.lora.init"
        f" in {_cel_literal(REWRITING_INITS)})",
        example={
            "method": {"lora": {"init": "pissa"}},
            "deepspeed": {"enabled": True, "zeroStage": 3},
        },
    ),
    Rule(
        name="adapter-method",
        section="",
        field="export.adapter",
        message="export.adapter: ONNX adapters come from method lora or qlora, not "
        "{method.type}; set export.adapter false",
        check=lambda m: not m.export.adapter or m.method.type in ADAPTER_METHODS,
        cel=f"!self.export.adapter || self.method.type in {_cel_literal(ADAPTER_METHODS)}",
        example={"method": {"type": "dora"}, "export": {"adapter": True}},
    ),
    Rule(
        name="adapter-task",
        section="",
        field="export.adapter",
        message="export.adapter: ONNX adapters are for generative models, not task "
        "{training.task}; set export.adapter false",
        check=lambda m: not m.export.adapter or m.training.task == "causal-lm",
        cel="!self.export.adapter || self.training.task == 'causal-lm'",
        example={
            "training": {"task": "text-classification"},
            "dataset": {"format": "classification"},
            "export": {"adapter": True},
        },
    ),
    # -- locations (maap_api.source_rules) ------------------------------------------------
    *SOURCE_RULES,
]


def rules_for(section: str, plane: Plane) -> list[Rule]:
    """The rules a model at `section` of `plane` enforces ("both": a shared section)."""
    return [
        r
        for r in RULES
        if r.section == section and (r.plane == "both" or plane in ("both", r.plane))
    ]


def enforce(model: BaseModel, section: str, plane: Plane) -> None:
    """Raise one pydantic error per broken rule, located at the field the rule names."""
    errors = []
    for rule in rules_for(section, plane):
        if rule.check(model):
            continue
        where = rule.relative_field()
        context = {"message": rule.render(model), "field": rule.field}
        errors.append(
            InitErrorDetails(
                type=PydanticCustomError(RULE_ERROR, "{message}", context),
                loc=where,
                input=value_at(model, ".".join(where)) if where else None,
            )
        )
    if errors:
        raise ValidationError.from_exception_data(type(model).__name__, errors)
