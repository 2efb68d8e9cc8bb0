"""ONNX Runtime GenAI with no server: what the engine alone does on one stream.

    python bench/engine_alone.py --model-dir DIR [--tokens 128] [--prompts 4] [--threads N]

The model is loaded as the server loads it (the same intra-op threads; `--threads 0` leaves
ONNX Runtime GenAI's own default). A greedy `og.Generator` per prompt (the chat template
rendered by the export's tokenizer, as the server does), every answer exactly --tokens
tokens: time to first token (prompt in, first token out) and decode tokens/s (the rest).
The gap between this and the server's single stream is the server's own cost. Prints one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from export_serve import PROMPTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads (default: as the server sets them; 0: unset)",
    )
    args = parser.parse_args()
    import numpy as np
    import onnxruntime_genai as og
    from maap_trainer.cpus import usable_cpus
    from maap_trainer.serve.runtime import model_config

    og.disable_telemetry_events()
    threads = None if args.threads == 0 else args.threads or usable_cpus()  # 0: og's default
    model = og.Model(model_config(og, args.model_dir, threads))
    tokenizer = og.Tokenizer(model)
    template = None
    config = args.model_dir / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")

    def run(prompt: str) -> tuple[float, float]:
        messages = json.dumps([{"role": "user", "content": prompt}])
        text = tokenizer.apply_chat_template(
            messages, template_str=template, add_generation_prompt=True
        )
        ids = np.asarray(tokenizer.encode(text), dtype=np.int32)
        params = og.GeneratorParams(model)
        params.set_search_options(
            max_length=len(ids) + args.tokens, min_length=len(ids) + args.tokens, do_sample=False
        )
        started = time.monotonic()
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        generator.generate_next_token()
        first = time.monotonic()
        made = 1
        while not generator.is_done():
            generator.generate_next_token()
            made += 1
        ended = time.monotonic()
        assert made == args.tokens, made
        return first - started, (made - 1) / (ended - first)

    run(PROMPTS[0])  # warm-up
    results = [run(p) for p in PROMPTS[: args.prompts]]
    print(json.dumps({
        "timeToFirstToken": statistics.median(r[0] for r in results),
        "decodeTokensPerSecond": statistics.median(r[1] for r in results),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
