"""NLP tasks beyond generation on the MiniLM encoder: text classification and NER, scored
on held-out files whose sentences (and, for NER, names) never appear in training."""

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
from tests.trainer_helpers import merge

pytestmark = pytest.mark.slow

# The bars each task must clear on its held-out file. Measured on 2 CPU cores: tickets
# accuracy 1.00 / F1 1.00 (untrained head: 0.39 / 0.29); NER token accuracy 0.92 / entity
# F1 0.87 (untrained: 0.15 / 0.00). The held-out NER sentences start with capitalised
# words the training templates never had, which costs precision.
CASES: dict[str, dict[str, Any]] = {
    "support-tickets": {
        "task": "text-classification", "method": "full", "learningRate": 1e-4, "epochs": 4,
        "accuracy": 0.9, "f1": 0.9,
    },
    "ner-news": {
        "task": "token-classification", "method": "lora", "learningRate": 2e-3, "epochs": 6,
        "accuracy": 0.85, "f1": 0.75,
    },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_task_reaches_its_stated_score(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    doc = copy.deepcopy(MINIMAL)
    doc["metadata"]["name"] = name
    doc["spec"] = merge(
        doc["spec"],
        {
            "model": {"preset": "all-minilm-l6-v2"},
            "dataset": {"path": str(EXAMPLES / name / "train.jsonl"), "evalPath": "heldout.jsonl"},
            "method": {"type": case["method"]},
            "training": {"task": case["task"], "epochs": case["epochs"], "batchSize": 16,
                         "learningRate": case["learningRate"], "maxSeqLength": 64},
            "export": {"enabled": False},
            "serving": {"enabled": False},
        },
    )  # fmt: skip
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    done = subprocess.run(
        [sys.executable, "-m", "maap.cli", "run", str(manifest), "--no-serve",
         "-o", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "out" / name
    metrics = json.loads((out / "metrics.json").read_text())
    print(name, {k: v for k, v in metrics.items() if k.startswith("eval")})
    assert metrics["task"] == case["task"]
    assert metrics["evalAccuracyAfter"] >= case["accuracy"], metrics
    assert metrics["evalF1After"] >= case["f1"], metrics
    assert metrics["evalF1After"] > metrics["evalF1Before"]
    assert metrics["evalLossAfter"] < metrics["evalLossBefore"]
    config = json.loads((out / "merged" / "config.json").read_text())
    labels = set(config["id2label"].values())
    if name == "ner-news":
        # Every place name in the data set is one word: no I-LOC.
        assert labels == {"O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC"}
        assert (out / "adapter" / "adapter_config.json").is_file()
    else:
        assert labels == {"billing", "shipping", "technical", "account"}
