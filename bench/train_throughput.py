"""Benchmark: training tokens/s and peak memory, maap's trainer against a plain
transformers Trainer + PEFT script (bench/baselines/plain_trainer_peft.py).

    python bench/train_throughput.py --rows 96 --runs 3 --out bench/results/train.json

Same model (SmolLM2-135M-Instruct, fp32 checkpoint), same rows (the first --rows of the
pirate chat set, assistant-only labels), LoRA r16/alpha 32 on all linear layers, batch 8,
one epoch, same threads. Each run is a fresh process, the three variants interleaved so
that a change of machine load hits all of them:

- baseline: the plain script (fp32, dynamic padding, the model's own loss);
- maap: `python -m maap_trainer train` with the defaults a user gets (precision auto);
- maap-fp32: the same with `precision: fp32`, to separate the loss path from bf16.

Tokens are non-padding input tokens; time is the training loop's wall time; memory is
the training loop's peak resident set (VmHWM reset when training starts). Quality check:
the held-out loss after training (24 rows never trained on).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from runstats import spread

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "examples" / "pirate-chat"
VARIANTS = ("baseline", "maap", "maap-fp32")


def base_checkpoint() -> str:
    from maap_api.stage_config import ModelSource
    from maap_trainer.model_prep import prepare_base_model

    return prepare_base_model(ModelSource(preset="smollm2-135m-instruct"))


def run_logged(command: list[str], log: Path) -> None:
    """One benchmark run in a fresh process, its stderr kept in `log`."""
    with log.open("w") as err:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=err)


def run_baseline(base: str, train: Path, rows: int, work: Path) -> dict[str, Any]:
    out = work / "baseline.json"
    script = REPO / "bench" / "baselines" / "plain_trainer_peft.py"
    held = DATA / "heldout.jsonl"
    command = [sys.executable, str(script), "--model", base, "--train", str(train),
               "--eval", str(held), "--rows", str(rows), "--out", str(out)]  # fmt: skip
    run_logged(command, work / "baseline.log")
    return json.loads(out.read_text())


def run_maap(base: str, train: Path, precision: str, work: Path) -> dict[str, Any]:
    output = work / f"maap-{precision}"
    config = {
        "jobName": "bench",
        "model": {"path": base},
        "dataset": {"path": str(train), "format": "chat", "evalPath": str(DATA / "heldout.jsonl")},
        "method": {"type": "lora", "lora": {"r": 16, "alpha": 32}},
        "training": {
            "epochs": 1,
            "learningRate": 5e-4,
            "batchSize": 8,
            "precision": precision,
            "resume": False,
        },
        "export": {"enabled": False},
        "serving": {"enabled": False},
        "outputDir": str(output),
    }
    path = work / f"maap-{precision}.json"
    path.write_text(json.dumps(config))
    run_logged(
        [sys.executable, "-m", "maap_trainer", "train", "--config", str(path)],
        work / f"maap-{precision}.log",
    )
    m = json.loads((output / "metrics.json").read_text())
    return {
        "tokens": m["trainTokens"],
        "seconds": m["trainRuntimeSeconds"],
        "tokensPerSecond": m["tokensPerSecond"],
        "peakTrainingMemoryBytes": m["peakTrainingMemoryBytes"],
        "evalLossAfter": m["evalLossAfter"],
        "steps": m["steps"],
        "precision": m["distributed"]["precision"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train.json")
    args = parser.parse_args()

    import peft
    import torch
    import transformers

    base = base_checkpoint()
    work = Path(tempfile.mkdtemp(prefix="maap-bench-train-"))
    lines = (DATA / "train.jsonl").read_text(encoding="utf-8").splitlines()[: args.rows]
    train = work / "train.jsonl"
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")

    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for i in range(args.runs):
        for variant in VARIANTS:
            if variant == "baseline":
                result = run_baseline(base, train, args.rows, work)
            else:
                precision = "fp32" if variant == "maap-fp32" else "auto"
                result = run_maap(base, train, precision, work)
            runs[variant].append(result)
            print(f"run {i + 1} {variant}: {json.dumps(result)}", file=sys.stderr, flush=True)

    summary: dict[str, Any] = {}
    for variant in VARIANTS:
        ratios_tps = [
            r["tokensPerSecond"] / b["tokensPerSecond"]
            for r, b in zip(runs[variant], runs["baseline"], strict=True)
        ]
        ratios_mem = [
            r["peakTrainingMemoryBytes"] / b["peakTrainingMemoryBytes"]
            for r, b in zip(runs[variant], runs["baseline"], strict=True)
        ]
        summary[variant] = {
            "tokensPerSecond": spread([r["tokensPerSecond"] for r in runs[variant]]),
            "peakTrainingMemoryMiB": spread(
                [round(r["peakTrainingMemoryBytes"] / 2**20) for r in runs[variant]]
            ),
            "evalLossAfter": spread([round(r["evalLossAfter"], 4) for r in runs[variant]]),
            "tokensPerSecondVsBaseline": spread([round(x, 2) for x in ratios_tps]),
            "peakMemoryVsBaseline": spread([round(x, 2) for x in ratios_mem]),
        }
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}, load after {os.getloadavg()}",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "rows": args.rows,
        "runs": runs,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
