"""Benchmark: maap's model server against llama.cpp's `llama-server`, same fine-tune.

    python bench/serve_vs_llama_cpp.py --merged DIR --out /tmp/bench-vs [--runs 3] \
        [--tokens 128] [--clients 1 4 8 16] [--servers maap-int4 maap-int8 llama-Q4_K_M ...]

The same merged fine-tuned checkpoint is exported by maap (int4, int8: ONNX Runtime GenAI)
and converted by llama.cpp's own tools (Q4_K_M, Q8_0; bench/llama_cpp.py builds them). Each
run starts every server in turn (the order rotates from run to run, so no server always
goes first on a cold machine) and measures, with the same requests (chat, greedy, every
answer exactly --tokens tokens, streamed):

- single stream: decode tokens/s (tokens after the first over the time after it) and time
  to first token, medians over the prompts sent one at a time;
- concurrency: aggregate tokens/s of a burst of N clients sending at once (N = --clients),
  and the burst's median time to first token.

Quality is measured once per server: greedy answers (up to 64 tokens, natural stop) to the
prompts, against PyTorch's greedy answers on the merged checkpoint: the share of PyTorch's
tokens each server reproduces before it first diverges, and how many answers are
identical. Prints one JSON document; bench/RESULTS.md records runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from runstats import spread

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import llama_cpp  # noqa: E402
from export_serve import PROMPTS, export_all  # noqa: E402
from streams import stream_one  # noqa: E402

QUALITY_TOKENS = 64
THREADS = os.cpu_count() or 1


@dataclass(frozen=True)
class ServerKind:
    name: str
    start: Callable[[Path], AbstractContextManager[Any]]  # log -> running server


def maap_server(
    model_dir: Path, batch: int, context: int
) -> Callable[[Path], AbstractContextManager[Any]]:
    from tests.serving import running_server

    flags = ("--max-batch-size", str(batch), "--max-context-length", str(context))
    return lambda log: running_server(model_dir, log, *flags)


def llama_server(
    binaries: llama_cpp.LlamaCpp, gguf: Path, slots: int, context_per_slot: int
) -> Callable[[Path], AbstractContextManager[Any]]:
    from maap_trainer.ports import free_port

    from tests.serving import serving

    def start(log: Path) -> AbstractContextManager[Any]:
        port = free_port()
        command = [
            str(binaries.server), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
            "-t", str(THREADS), "-tb", str(THREADS), "--parallel", str(slots),
            "-c", str(slots * context_per_slot), "--jinja", "--no-webui",
        ]  # fmt: skip
        return serving(command, port, log, ready_path="/health")

    return start


def answer(http: Any, api: str, prompt: str) -> str:
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": QUALITY_TOKENS,
        "temperature": 0,
    }
    r = http.post(f"{api}/chat/completions", json=body, timeout=600)
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


def measure(http: Any, api: str, tokens: int, clients: list[int]) -> dict[str, Any]:
    most = max(clients)
    with ThreadPoolExecutor(most) as pool:

        def burst(n: int) -> tuple[float, list[dict[str, float]]]:
            prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
            started = time.monotonic()
            done = list(pool.map(lambda p: stream_one(http, api, p, tokens), prompts))
            return time.monotonic() - started, done

        burst(most)  # warm-up: the model, and one open connection per client
        single = [stream_one(http, api, p, tokens) for p in PROMPTS[:4]]
        figures: dict[str, Any] = {
            "singleStream": {
                "decodeTokensPerSecond": statistics.median(s["decode"] for s in single),
                "timeToFirstToken": statistics.median(s["ttft"] for s in single),
            }
        }
        for n in clients:
            wall, done = burst(n)
            figures[f"clients{n}"] = {
                "aggregateTokensPerSecond": sum(d["tokens"] for d in done) / wall,
                "medianTimeToFirstToken": statistics.median(d["ttft"] for d in done),
            }
    return figures


def engine_alone(model_dir: Path, tokens: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("engine_alone.py")),
         "--model-dir", str(model_dir), "--tokens", str(tokens)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def pytorch_answers(merged: Path, prompts: list[str]) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    answers = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=QUALITY_TOKENS, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)  # fmt: skip
        new = out[0, ids.shape[1] :].tolist()
        answers.append([t for t in new if t != tokenizer.eos_token_id])
    return answers


def agreement(tokenizer: Any, reference: list[list[int]], texts: list[str]) -> dict[str, Any]:
    """Share of PyTorch's greedy tokens reproduced before the first divergence (the served
    text re-tokenized), and the number of identical answers."""
    reproduced, total, identical = 0, 0, 0
    for ref, text in zip(reference, texts, strict=True):
        got = tokenizer(text, add_special_tokens=False).input_ids
        prefix = 0
        for a, b in zip(ref, got, strict=False):
            if a != b:
                break
            prefix += 1
        reproduced, total = reproduced + prefix, total + len(ref)
        identical += int(got == ref)
    return {
        "prefixAgreement": round(reproduced / total, 3),
        "identicalAnswers": f"{identical}/{len(reference)}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--merged", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument(
        "--servers", nargs="+",
        default=["maap-int4", "llama-Q4_K_M", "maap-int8", "llama-Q8_0"],
    )  # fmt: skip
    parser.add_argument("--no-quality", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import onnxruntime_genai
    from transformers import AutoTokenizer

    binaries = llama_cpp.build()
    ggufs = llama_cpp.convert(binaries, args.merged)
    precisions = [s.removeprefix("maap-") for s in args.servers if s.startswith("maap-")]
    missing = [p for p in precisions if not (args.out / f"export-{p}" / "onnx").is_dir()]
    exports = export_all(args.merged, REPO / "examples/pirate-chat/train.jsonl", args.out,
                         missing, 1, False) if missing else {}  # fmt: skip
    most = max(args.clients)
    # Each request's room, the same for both: prompt (~50 tokens with the template's system
    # turn) + answer. llama.cpp splits -c across its slots; maap sizes each KV cache by it.
    context_per_slot = 512
    kinds, model_dirs = {}, {}
    for name in args.servers:
        if name.startswith("maap-"):
            model_dir = args.out / f"export-{name.removeprefix('maap-')}" / "onnx"
            kinds[name] = ServerKind(name, maap_server(model_dir, most, context_per_slot))
            model_dirs[name] = model_dir
        else:
            gguf = ggufs[name.removeprefix("llama-")]
            kinds[name] = ServerKind(name, llama_server(binaries, gguf, most, context_per_slot))

    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()}",
        "versions": {
            "onnxruntime-genai": onnxruntime_genai.__version__,
            "llama.cpp": binaries.version(),
        },
        "merged": str(args.merged),
        "tokensPerAnswer": args.tokens,
        "runs": args.runs,
        "exports": {k: v["sizeBytes"] for k, v in exports.items()},
        "gguf": {k: v.stat().st_size for k, v in ggufs.items()},
    }
    tokenizer = AutoTokenizer.from_pretrained(args.merged)
    reference = None if args.no_quality else pytorch_answers(args.merged, PROMPTS)
    per_run: dict[str, list[dict[str, Any]]] = {name: [] for name in kinds}
    quality: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=most, max_keepalive_connections=most)
    order = list(kinds)
    for run in range(args.runs):
        for name in order[run % len(order) :] + order[: run % len(order)]:
            log = args.out / f"{name}-run{run}.log"
            with kinds[name].start(log) as srv, httpx.Client(limits=limits) as http:
                api = f"{srv.base}/v1"
                if reference is not None and name not in quality:
                    texts = [answer(http, api, p) for p in PROMPTS]
                    quality[name] = agreement(tokenizer, reference, texts)
                figures = measure(http, api, args.tokens, args.clients)
            per_run[name].append(figures)
            print(f"run {run} {name}: {json.dumps(figures)}", file=sys.stderr, flush=True)
            if name in model_dirs:  # the same export with no server: the engine's share
                alone = engine_alone(model_dirs[name], args.tokens)
                per_run.setdefault(f"{name} engine alone", []).append({"singleStream": alone})
    report["servers"] = {name: summarize(runs) for name, runs in per_run.items()}
    report["quality"] = quality
    report["loadAfter"] = os.getloadavg()
    print(json.dumps(report, indent=2))


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """min / median / max over the runs of every figure."""
    summary: dict[str, Any] = {}
    for section, values in runs[0].items():
        summary[section] = {key: spread([run[section][key] for run in runs]) for key in values}
    return summary


if __name__ == "__main__":
    main()
