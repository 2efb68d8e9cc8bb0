"""Benchmark: export per precision (time, size, parity) and serving throughput.

    python bench/export_serve.py --merged DIR --out /tmp/bench [--runs 3] [--parity] \
        [--precisions fp32 int8 int4] [--serve-precisions int4 fp32] [--clients 1 4 8]

Every serving figure is measured against a baseline taken in the same run on the same
machine: PyTorch fp32 `generate` on the merged checkpoint for decode speed and time to
first token, one client for the concurrent aggregates (1, 4 and 8 clients, each a burst
repeated --runs times). Prints one JSON document; bench/RESULTS.md records runs.
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

from runstats import spread
from streams import stream_one

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


def export_all(
    merged: Path, dataset: Path, out: Path, precisions: list[str], runs: int, parity: bool
) -> dict[str, Any]:
    """Export each precision `runs` times (build time and size); the parity gate, if asked,
    runs once per precision (it is mostly PyTorch time, and deterministic)."""
    from maap_api.stage_config import TrainerConfig
    from maap_trainer.export import run_export

    results = {}
    for precision in precisions:
        job = out / f"export-{precision}"
        job.mkdir(parents=True, exist_ok=True)
        if not (job / "merged").exists():
            os.symlink(merged.resolve(), job / "merged")
        builds, sizes, gate = [], [], None
        for i in range(runs):
            cfg = TrainerConfig.model_validate(
                {
                    "jobName": "bench",
                    "model": {"path": str(merged)},
                    "dataset": {"path": str(dataset)},
                    "export": {"precision": precision, "parity": {"enabled": parity and i == 0}},
                    "outputDir": str(job),
                }
            )
            info = run_export(cfg)
            builds.append(info["seconds"])
            sizes.append(info["sizeBytes"])
            gate = gate or info.get("parity")
        results[precision] = {
            "buildSeconds": spread(builds),
            "sizeBytes": sizes[-1],
            "parity": gate,
        }
        print(f"{precision}: {json.dumps(results[precision])}", file=sys.stderr, flush=True)
    return results


def pytorch_decode(merged: Path, tokens: int, prompts: list[str], runs: int) -> dict[str, Any]:
    """Greedy `generate` on the merged fp32 checkpoint, one prompt at a time: time to first
    token (a 1-token generate) and decode rate (the other tokens over the rest of the time)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()

    def timed(ids: Any, n: int) -> float:
        started = time.monotonic()
        with torch.no_grad():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           pad_token_id=tokenizer.eos_token_id)  # fmt: skip
        return time.monotonic() - started

    encoded = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        encoded.append(tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids)
    timed(encoded[0], 4)  # warm-up
    rates, firsts = [], []
    for _ in range(runs):
        first = [timed(ids, 1) for ids in encoded]
        whole = [timed(ids, tokens) for ids in encoded]
        rates.append((tokens - 1) * len(encoded) / (sum(whole) - sum(first)))
        firsts.append(statistics.median(first))
    return {"decodeTokensPerSecond": spread(rates), "timeToFirstToken": spread(firsts)}


def serve_figures(
    model_dir: Path, tokens: int, client_counts: list[int], runs: int, log: Path
) -> dict[str, Any]:
    """For each number of concurrent clients, `runs` bursts: all clients send at once.

    The clients share one connection pool, opened by a warm-up burst: 8 clients each making
    its own client (SSL context, connection) in one Python process would spread their
    requests over half a second of GIL time, which measures the client, not the server."""
    import httpx

    from tests.serving import running_server

    figures: dict[str, Any] = {}
    most = max(client_counts)
    limits = httpx.Limits(max_connections=most, max_keepalive_connections=most)
    with (
        running_server(model_dir, log, "--max-batch-size", str(most)) as srv,
        httpx.Client(limits=limits) as http,
        ThreadPoolExecutor(most) as pool,
    ):

        def burst(clients: int) -> list[dict[str, float]]:
            return list(pool.map(lambda p: stream_one(http, srv.api, p, tokens), PROMPTS[:clients]))

        burst(most)  # warm-up: the model, and one open connection per client
        for clients in client_counts:
            aggregate, ttft, decode = [], [], []
            for _ in range(runs):
                started = time.monotonic()
                done = burst(clients)
                wall = time.monotonic() - started
                aggregate.append(sum(d["tokens"] for d in done) / wall)
                ttft.append(statistics.median(d["ttft"] for d in done))
                decode.append(statistics.median(d["decode"] for d in done))
            figures[str(clients)] = {
                "aggregateTokensPerSecond": spread(aggregate),
                "medianTimeToFirstToken": spread(ttft),
                "medianStreamDecodeTokensPerSecond": spread(decode),
            }
            print(f"{model_dir} x{clients}: {figures[str(clients)]}", file=sys.stderr, flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--merged", type=Path, required=True)
    parser.add_argument("--dataset", type=Path, default=REPO / "examples/pirate-chat/train.jsonl")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8", "int4"])
    parser.add_argument("--serve-precisions", nargs="+", default=["int4", "fp32"])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--parity", action="store_true", help="run the parity gate once each")
    parser.add_argument("--skip-export", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import onnxruntime
    import onnxruntime_genai
    import torch

    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()}",
        "versions": {
            "onnxruntime": onnxruntime.__version__,
            "onnxruntime-genai": onnxruntime_genai.__version__,
            "torch": torch.__version__,
        },
        "merged": str(args.merged),
        "runs": args.runs,
        "tokensPerAnswer": args.tokens,
    }
    if not args.skip_export:
        report["export"] = export_all(
            args.merged, args.dataset, args.out, args.precisions, args.runs, args.parity
        )
    report["pytorchBaseline"] = pytorch_decode(args.merged, args.tokens, PROMPTS[:4], args.runs)
    baseline = report["pytorchBaseline"]["decodeTokensPerSecond"]["median"]
    report["serving"] = {}
    report["ratios"] = {}
    for precision in args.serve_precisions:
        served = args.out / f"export-{precision}" / "onnx"
        figures = serve_figures(
            served, args.tokens, args.clients, args.runs, args.out / f"serve-{precision}.log"
        )
        report["serving"][precision] = figures
        one = figures[str(min(args.clients))]
        most = figures[str(max(args.clients))]
        report["ratios"][precision] = {
            "singleStreamDecodeVsPytorch": round(
                one["medianStreamDecodeTokensPerSecond"]["median"] / baseline, 2
            ),
            f"aggregate{max(args.clients)}VsOne": round(
                most["aggregateTokensPerSecond"]["median"]
                / one["aggregateTokensPerSecond"]["median"],
                2,
            ),
        }
    report["loadAfter"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
