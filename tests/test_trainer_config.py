"""Trainer spec: method/DeepSpeed/task combinations, CRD rules, DeepSpeed config, topology."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from maap.crd import build_crd
from maap.manifest import ManifestError, parse_manifest
from maap_api.errors import ConfigError
from maap_api.field_errors import format_validation_error
from maap_api.stage_config import DeepSpeedSpec, MethodSpec, TrainerConfig
from maap_trainer.train.deepspeed_config import build_deepspeed_config
from maap_trainer.train.distributed import launch_command, set_runtime_env, topology_from_env
from pydantic import ValidationError

from tests.test_api import MINIMAL


def spec(**sections: Any) -> dict[str, Any]:
    doc = copy.deepcopy(MINIMAL)
    doc["spec"].update(sections)
    return doc


@pytest.mark.parametrize(
    "method",
    [
        {"type": "lora"},
        {"type": "qlora"},
        {"type": "dora"},
        {"type": "full"},
        {"type": "lora", "lora": {"rslora": True, "init": "pissa", "r": 8}},
        {"type": "lora", "lora": {"init": "loftq"}},
        {"type": "dora", "lora": {"targetModules": ["q_proj", "v_proj"]}},
        {"type": "lora", "lora": {"modulesToSave": ["lm_head"], "init": "gaussian"}},
    ],
)
def test_every_method_is_accepted(method: dict[str, Any]) -> None:
    job = parse_manifest(spec(method=method))
    assert job.spec.method.type == method["type"]


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"method": {"type": "full", "lora": {"r": 8}}},
         "spec.method.lora: full fine-tuning trains every weight"),
        ({"method": {"type": "full", "lora": {"modulesToSave": ["lm_head"]}}},
         "spec.method.lora: full fine-tuning"),
        ({"method": {"type": "qlora", "lora": {"init": "pissa"}}},
         "spec.method.lora.init: pissa rewrites the base weights, but qlora keeps them in 4 bits"),
        ({"method": {"type": "qlora", "lora": {"init": "loftq"}}}, "use type lora with init loftq"),
        ({"method": {"lora": {"init": "loftq", "rslora": True}}},
         "spec.method.lora.rslora: LoftQ"),
        ({"method": {"lora": {"init": "svd"}}}, "spec.method.lora.init: Input should be"),
        ({"deepspeed": {"enabled": True, "zeroStage": 2, "offloadParameters": True}},
         "spec.deepspeed.offloadParameters: needs zeroStage 3 (got 2)"),
        ({"deepspeed": {"enabled": True, "zeroStage": 0, "offloadOptimizer": True}},
         "spec.deepspeed.offloadOptimizer: needs zeroStage 1, 2 or 3"),
        ({"deepspeed": {"enabled": True, "zeroStage": 3, "config": {"zero_optimization": {}}}},
         "spec.deepspeed.config: a raw DeepSpeed config replaces the generated one"),
        ({"deepspeed": {"zeroStage": 4}}, "spec.deepspeed.zeroStage: Input should be 0, 1, 2 or 3"),
        ({"training": {"task": "text-classification", "packing": True},
          "dataset": {"path": "d.jsonl", "format": "classification"}},
         "spec.training.packing: packing concatenates token sequences for causal-lm; task "
         "text-classification"),
        ({"training": {"task": "summarise"}}, "spec.training.task: Input should be 'causal-lm'"),
        ({"training": {"checkpointsToKeep": 1}}, "spec.training.checkpointsToKeep"),
    ],
)  # fmt: skip
def test_nonsense_is_rejected_with_the_reason(sections: dict[str, Any], expected: str) -> None:
    with pytest.raises(ManifestError) as err:
        parse_manifest(spec(**sections))
    assert expected in str(err.value)


def trainer_config(**sections: Any) -> TrainerConfig:
    base: dict[str, Any] = {
        "jobName": "t",
        "model": {"preset": "smollm2-135m-instruct"},
        "dataset": {"path": "d.jsonl"},
        "outputDir": "/out",
    }
    return TrainerConfig.model_validate({**base, **sections})


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"method": {"type": "qlora"}, "deepspeed": {"enabled": True}},
         "method.type: qlora keeps frozen 4-bit bitsandbytes weights"),
        ({"method": {"lora": {"init": "pissa"}}, "deepspeed": {"enabled": True, "zeroStage": 3}},
         "method.lora.init: pissa decomposes each full weight matrix"),
        ({"training": {"task": "token-classification"},
          "dataset": {"path": "d.jsonl", "format": "chat"},
          "export": {"enabled": False}, "serving": {"enabled": False}},
         "dataset.format: chat rows do not fit training.task token-classification"),
        ({"model": {"preset": "all-minilm-l6-v2"}},
         "training.task: model.preset all-minilm-l6-v2 is an encoder"),
    ],
)  # fmt: skip
def test_cross_section_nonsense_names_the_field(sections: dict[str, Any], expected: str) -> None:
    # The pod's own config enforces the same rules as the spec, as one line per problem.
    with pytest.raises(ValidationError) as err:
        trainer_config(**sections)
    assert format_validation_error(err.value, TrainerConfig).startswith(expected)


def test_api_server_defaults_do_not_trip_the_full_method_check() -> None:
    # The API server stores every default; a full fine-tune comes back with method.lora set.
    method = MethodSpec.model_validate({"type": "full", "lora": MethodSpec().lora.to_json_dict()})
    assert method.type == "full"
    ds = DeepSpeedSpec.model_validate(
        {**DeepSpeedSpec().to_json_dict(), "enabled": True, "config": {"train_batch_size": 8}}
    )
    assert ds.config == {"train_batch_size": 8}


def test_crd_carries_the_rules_as_cel() -> None:
    props = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    spec_props = props["spec"]["properties"]
    rules = {
        name: [r["rule"] for r in spec_props[name].get("x-kubernetes-validations", [])]
        for name in ("method", "deepspeed", "training")
    }
    assert any("'qlora'" in r and "self.lora.init" in r for r in rules["method"])
    assert any("offloadParameters" in r and "zeroStage == 3" in r for r in rules["deepspeed"])
    assert any("packing" in r for r in rules["training"])
    lora = spec_props["method"]["properties"]["lora"]
    assert lora["properties"]["init"]["enum"] == ["default", "gaussian", "pissa", "loftq"]
    raw = spec_props["deepspeed"]["properties"]["config"]
    assert raw.get("x-kubernetes-preserve-unknown-fields") is True


def test_generated_deepspeed_config() -> None:
    z3 = build_deepspeed_config(
        DeepSpeedSpec(enabled=True, zero_stage=3, offload_optimizer=True, offload_parameters=True),
        on_gpu=False,
    )
    zero = z3["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": False}
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    assert z3["optimizer"]["type"] == "AdamW" and z3["optimizer"]["params"]["lr"] == "auto"
    assert z3["train_micro_batch_size_per_gpu"] == "auto" and z3["bf16"] == {"enabled": "auto"}
    z2 = build_deepspeed_config(DeepSpeedSpec(enabled=True, zero_stage=2), on_gpu=True)
    assert z2["zero_optimization"] == {"stage": 2} and "optimizer" not in z2
    raw = {"zero_optimization": {"stage": 1}, "train_batch_size": "auto"}
    assert build_deepspeed_config(DeepSpeedSpec(enabled=True, config=raw), on_gpu=True) == raw


def test_topology_from_the_torchrun_variables() -> None:
    env = {"NNODES": "3", "NODE_RANK": "2", "NPROC_PER_NODE": "4",
           "MASTER_ADDR": "job-0.job-headless", "MASTER_PORT": "29501"}  # fmt: skip
    top = topology_from_env(env)
    assert (top.world_size, top.node_rank, top.master_addr, top.master_port) == (
        12,
        2,
        "job-0.job-headless",
        29501,
    )
    command = launch_command(top, ["train", "--config", "c.json"])
    assert command[1:3] == ["-m", "torch.distributed.run"]
    assert "--nproc_per_node=4" in command and "--node_rank=2" in command
    assert command[-5:] == ["-m", "maap_trainer", "train", "--config", "c.json"]
    local = topology_from_env({"NPROC_PER_NODE": "2"})
    assert local.world_size == 2 and local.master_addr == "127.0.0.1" and local.master_port > 0
    runtime = set_runtime_env({"HOME": "/h"}, local, on_gpu=False)
    assert runtime["DS_ACCELERATOR"] == "cpu"
    assert runtime["TORCH_EXTENSIONS_DIR"].endswith("maap/torch_extensions")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"NNODES": "2", "NPROC_PER_NODE": "1"}, "MASTER_ADDR: needed when NNODES > 1"),
        ({"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "a"}, "NODE_RANK: 2 is not below"),
        ({"NPROC_PER_NODE": "two"}, "NPROC_PER_NODE: expected an integer, got 'two'"),
        ({"NPROC_PER_NODE": "0"}, "NPROC_PER_NODE: must be >= 1"),
    ],
)
def test_bad_topology_names_the_variable(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        topology_from_env(env)
