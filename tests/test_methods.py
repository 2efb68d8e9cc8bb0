"""Every method through the real CLI: `maap validate` accepts it, `maap run` trains it for a
few steps on CPU, and the eval loss falls."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import EXAMPLES
from tests.test_api import MINIMAL
from tests.trainer_helpers import merge, short_chat_rows, write_jsonl

# Learning rates that move a 135M model measurably in 4 steps; full fine-tuning updates
# every weight and needs a far smaller one.
METHODS: dict[str, dict[str, Any]] = {
    "lora": {"method": {"type": "lora"}},
    "qlora": {"method": {"type": "qlora"}},
    # DoRA renormalises every adapted weight matrix on each step: on CPU, adapting all
    # linear layers costs minutes per step, so the test adapts the attention projections.
    "dora": {"method": {"type": "dora", "lora": {"targetModules": ["q_proj", "v_proj"]}}},
    "full": {"method": {"type": "full"}, "training": {"learningRate": 5e-5}},
    "rslora-pissa": {"method": {"type": "lora", "lora": {"r": 8, "rslora": True, "init": "pissa",
                                                         "targetModules": ["q_proj", "v_proj"]}},
                     "training": {"learningRate": 5e-4}},
    "lora-modules": {"method": {"type": "lora", "lora": {
        "init": "gaussian", "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "modulesToSave": ["model.norm"]}}},
}  # fmt: skip


def manifest(tmp_path: Path, name: str, data: Path, extra: dict[str, Any]) -> Path:
    doc = copy.deepcopy(MINIMAL)
    doc["metadata"]["name"] = name
    doc["spec"] = merge(
        doc["spec"],
        {
            "dataset": {"path": str(data), "evalFraction": 0.25},
            "training": {"maxSteps": 4, "batchSize": 4, "maxSeqLength": 96,
                         "learningRate": 2e-3, "loggingSteps": 1},
            "export": {"enabled": False},
            "serving": {"enabled": False},
        },
    )  # fmt: skip
    doc["spec"] = merge(doc["spec"], extra)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def maap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "maap.cli", *args], capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("methods") / "short.jsonl", short_chat_rows(32))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_validate_accepts_every_method(tmp_path: Path, data: Path, name: str) -> None:
    done = maap("validate", str(manifest(tmp_path, name, data, METHODS[name])))
    assert done.returncode == 0, done.stderr
    assert "is valid" in done.stdout


def test_validate_rejects_a_nonsense_combination_in_one_line(tmp_path: Path, data: Path) -> None:
    extra = {"method": {"type": "qlora"}, "deepspeed": {"enabled": True}}
    done = maap("validate", str(manifest(tmp_path, "bad", data, extra)))
    assert done.returncode == 2
    assert "qlora keeps frozen 4-bit bitsandbytes weights" in done.stderr
    assert "Traceback" not in done.stderr


def test_loftq_is_accepted_but_needs_a_gpu_to_run(tmp_path: Path, data: Path) -> None:
    path = manifest(tmp_path, "loftq", data, {"method": {"lora": {"init": "loftq"}}})
    assert maap("validate", str(path)).returncode == 0
    import torch

    if torch.cuda.is_available():
        pytest.skip("on a GPU LoftQ runs; this checks the CPU refusal")
    done = maap("run", str(path), "--no-serve", "-o", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "method.lora.init: loftq needs a GPU; on CPU use pissa or default" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(METHODS))
def test_run_trains_every_method_and_eval_loss_falls(tmp_path: Path, data: Path, name: str):
    done = maap("run", str(manifest(tmp_path, name, data, METHODS[name])), "--no-serve",
                "-o", str(tmp_path / "out"))  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "out" / name
    metrics = json.loads((out / "metrics.json").read_text())
    print(name, {k: metrics[k] for k in ("evalLossBefore", "evalLossAfter", "secondsPerStep",
                                         "trainableParameters")})  # fmt: skip
    assert metrics["steps"] == 4 and metrics["trainRows"] == 24 and metrics["evalRows"] == 8
    assert metrics["evalLossAfter"] < metrics["evalLossBefore"], metrics
    # The training loop's own peak (VmHWM reset at its start): more than the model's
    # weights, less than this machine has.
    assert metrics["peakTrainingMemoryKind"] == "rss"
    assert 200 * 2**20 < metrics["peakTrainingMemoryBytes"] < 20 * 2**30, metrics
    # On CPU bf16 is autocast only: the merged model keeps fp32 weights.
    with (out / "merged" / "model.safetensors").open("rb") as f:
        tensors = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    dtypes = {t["dtype"] for name, t in tensors.items() if name != "__metadata__"}
    assert dtypes == {"F32"}, (metrics["distributed"]["precision"], dtypes)
    assert (out / "merged" / "tokenizer.json").is_file()
    if name == "full":
        assert not (out / "adapter").exists()
        assert metrics["trainableParameters"] == metrics["totalParameters"]
    else:
        config = json.loads((out / "adapter" / "adapter_config.json").read_text())
        lora = METHODS[name]["method"].get("lora", {})
        assert config["use_dora"] == (name == "dora")
        assert config["use_rslora"] == lora.get("rslora", False)
        if "modulesToSave" in lora:
            assert "model.norm" in config["modules_to_save"]
        if lora.get("init") == "pissa":
            # Saved converted to a plain LoRA on the original base: twice the rank.
            assert config["r"] == 2 * lora["r"] and config["init_lora_weights"] is True
        assert metrics["trainableParameters"] < 0.1 * metrics["totalParameters"]


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_bundled_examples_validate(example: Path) -> None:
    done = maap("validate", str(example))
    assert done.returncode == 0, done.stderr
