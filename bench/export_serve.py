"""Benchmark: export per precision (time, size, parity) and serving throughput.

    python bench/export_serve.py --merged DIR --dataset examples/pirate-chat/train.jsonl \
        --out /tmp/bench [--precisions fp32 int8 int4] [--clients 8] [--tokens 64]

Every serving figure is measured against a baseline taken in the same run on the same
machine: PyTorch fp32 `generate` on the merged checkpoint for decode speed, one client at
a time for the concurrent aggregate. Prints one JSON document; bench/RESULTS.md records runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PROMPTS = [
    "Write a long story about a dragon who learns to bake bread.",
    "Explain in detail how a steam engine works.",
    "Describe a walk through a busy market in a large city.",
    "Tell me everything you know about the history of sailing ships.",
    "Write a letter to a friend about a trip to the mountains.",
    "Explain how the internet works to a ten year old.",
    "Describe the life cycle of a star.",
    "Write a recipe for a vegetable soup with many steps.",
]


def export_all(merged: Path, dataset: Path, out: Path, precisions: list[str]) -> dict[str, Any]:
    from maap_trainer.config import TrainerConfig
    from maap_trainer.export import run_export

    results = {}
    for precision in precisions:
        job = out / f"export-{precision}"
        job.mkdir(parents=True, exist_ok=True)
        if not (job / "merged").exists():
            os.symlink(merged.resolve(), job / "merged")
        cfg = TrainerConfig.model_validate(
            {
                "jobName": "bench",
                "model": {"path": str(merged)},
                "dataset": {"path": str(dataset)},
                "export": {"precision": precision},
                "outputDir": str(job),
            }
        )
        started = time.monotonic()
        info = run_export(cfg)
        results[precision] = {
            "totalSeconds": round(time.monotonic() - started, 1),
            "buildSeconds": info["seconds"],
            "sizeBytes": info["sizeBytes"],
            "parity": info.get("parity"),
        }
        print(f"{precision}: {json.dumps(results[precision])}", file=sys.stderr)
    return results


def pytorch_decode(merged: Path, tokens: int, prompts: list[str]) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    generated, seconds = 0, 0.0
    for prompt in prompts:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        started = time.monotonic()
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens,
                                 do_sample=False, pad_token_id=tokenizer.eos_token_id)  # fmt: skip
        seconds += time.monotonic() - started
        generated += out.shape[1] - ids.shape[1]
    return {"tokensPerSecond": round(generated / seconds, 1), "tokens": generated}


def serve_figures(model_dir: Path, tokens: int, clients: int, log: Path) -> dict[str, Any]:
    import httpx

    from tests.serving import running_server

    def one(prompt: str) -> tuple[int, float, float]:
        body = {
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": tokens,
            "min_tokens": tokens,  # every answer is exactly `tokens` long: comparable rates
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        started = time.monotonic()
        first = None
        completion = 0
        with httpx.stream("POST", f"{srv.api}/chat/completions", json=body, timeout=600) as r:
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                if chunk.get("usage"):
                    completion = chunk["usage"]["completion_tokens"]
                elif (
                    first is None
                    and chunk["choices"]
                    and chunk["choices"][0]["delta"].get("content")
                ):
                    first = time.monotonic() - started
        return completion, first or 0.0, time.monotonic() - started

    with running_server(model_dir, log, "--max-batch-size", str(clients)) as srv:
        one(PROMPTS[0])  # warm-up
        sequential = [one(p) for p in PROMPTS[:clients]]
        seq_tokens = sum(s[0] for s in sequential)
        seq_seconds = sum(s[2] for s in sequential)
        started = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            together = list(pool.map(one, PROMPTS[:clients]))
        wall = time.monotonic() - started
        con_tokens = sum(s[0] for s in together)
    return {
        "singleClient": {
            "tokensPerSecond": round(seq_tokens / seq_seconds, 1),
            "medianTimeToFirstToken": round(statistics.median(s[1] for s in sequential), 3),
            "tokens": seq_tokens,
        },
        "concurrent": {
            "clients": clients,
            "aggregateTokensPerSecond": round(con_tokens / wall, 1),
            "medianTimeToFirstToken": round(statistics.median(s[1] for s in together), 3),
            "tokens": con_tokens,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--merged", type=Path, required=True)
    parser.add_argument("--dataset", type=Path, default=REPO / "examples/pirate-chat/train.jsonl")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8", "int4"])
    parser.add_argument("--serve-precision", default="int4")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--skip-export", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()}",
        "merged": str(args.merged),
    }
    if not args.skip_export:
        report["export"] = export_all(args.merged, args.dataset, args.out, args.precisions)
    served = args.out / f"export-{args.serve_precision}" / "onnx"
    report["serving"] = {
        "precision": args.serve_precision,
        **serve_figures(served, args.tokens, args.clients, args.out / "serve.log"),
    }
    report["pytorchBaseline"] = pytorch_decode(args.merged, args.tokens, PROMPTS[:4])
    single = report["serving"]["singleClient"]["tokensPerSecond"]
    report["ratios"] = {
        "onnxSingleVsPytorch": round(single / report["pytorchBaseline"]["tokensPerSecond"], 2),
        "concurrentVsSingle": round(
            report["serving"]["concurrent"]["aggregateTokensPerSecond"] / single, 2
        ),
    }
    report["loadAfter"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
