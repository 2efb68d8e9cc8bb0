"""DeepSpeed ZeRO-2 and ZeRO-3 with CPU offload on 2 real processes on CPU, really sharded.

Each rank writes what it saw (ranks/rank-N.json): the world size of torchrun, of the
Trainer and of accelerate; the steps it ran; how many parameter and optimizer-state
elements it holds. A silent world of one (the CPU pitfall) would show 1 and the full sizes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.trainer_helpers import (
    metrics_of,
    run_stage,
    short_chat_rows,
    trainer_config,
    write_jsonl,
)

pytestmark = pytest.mark.slow

ROWS = 40  # 32 train + 8 eval
BATCH = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("ds") / "short.jsonl", short_chat_rows(ROWS))


def train_on_two_processes(tmp_path: Path, data: Path, deepspeed: dict, method: dict) -> dict:
    config, output = trainer_config(
        tmp_path, data, "zero", method=method, deepspeed=deepspeed,
        training={"epochs": 1, "batchSize": BATCH},
    )  # fmt: skip
    done = run_stage(config, env={"NPROC_PER_NODE": "2"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    metrics = metrics_of(output)
    print(json.dumps({k: metrics[k] for k in ("method", "evalLossBefore", "evalLossAfter",
                                              "secondsPerStep", "trainableParameters",
                                              "distributed")}))  # fmt: skip
    # Rows split over 2 ranks: half the optimizer steps a single process would take.
    assert metrics["trainRows"] == 32
    assert metrics["steps"] == math.ceil(32 / (BATCH * 2)) == 4
    assert metrics["evalLossAfter"] < metrics["evalLossBefore"], metrics
    assert (output / "adapter" / "adapter_model.safetensors").is_file()
    assert (output / "merged" / "model.safetensors").is_file()
    ranks = metrics["distributed"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    for r in ranks:
        assert r["worldSize"] == r["trainerWorldSize"] == r["acceleratorProcesses"] == 2, r
        assert r["steps"] == 4
    return metrics


def test_zero3_offload_partitions_parameters_and_optimizer(tmp_path: Path, data: Path) -> None:
    metrics = train_on_two_processes(
        tmp_path, data,
        {"enabled": True, "zeroStage": 3, "offloadOptimizer": True, "offloadParameters": True},
        {"type": "dora", "lora": {"targetModules": ["q_proj", "v_proj"]}},
    )  # fmt: skip
    assert metrics["distributed"]["zeroStage"] == 3
    trainable = metrics["trainableParameters"]
    for r in metrics["distributed"]["ranks"]:
        assert r["parametersPartitioned"]
        # Each rank holds half of every parameter (up to padding), not the whole model.
        assert r["localParameterElements"] <= 0.51 * r["fullParameterElements"], r
        assert r["localOptimizerStateElements"] <= 0.51 * trainable, r


def test_zero2_offload_partitions_optimizer_state(tmp_path: Path, data: Path) -> None:
    metrics = train_on_two_processes(
        tmp_path,
        data,
        {"enabled": True, "zeroStage": 2, "offloadOptimizer": True},
        {"type": "lora"},
    )
    assert metrics["distributed"]["zeroStage"] == 2
    trainable = metrics["trainableParameters"]
    for r in metrics["distributed"]["ranks"]:
        assert not r["parametersPartitioned"], "ZeRO-2 keeps whole parameters on every rank"
        assert r["localParameterElements"] == r["fullParameterElements"]
        assert 0.45 * trainable <= r["localOptimizerStateElements"] <= 0.55 * trainable, r
