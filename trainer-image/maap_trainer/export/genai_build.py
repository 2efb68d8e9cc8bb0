"""Run the ONNX Runtime GenAI model builder on a transformers checkpoint.

The builder writes the graph, weights, `genai_config.json`, tokenizer and chat template.
It runs in a child process: it prints a very long progress log (kept in a file) and holds
a lot of memory that is gone when it exits.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from maap_api.errors import UserError


class ExportError(UserError):
    pass


# What `auto` means per precision: k_quant_mixed keeps the head and the most sensitive
# layers in int8, which halves int4's perplexity loss on SmolLM2 for ~30% more bytes.
AUTO_QUANTIZATION = {"int4": "k_quant_mixed", "int8": "default"}


@dataclass(frozen=True)
class BuildRequest:
    checkpoint: Path
    output: Path
    precision: str
    execution_provider: str
    quantization: str = "auto"
    extra_options: tuple[str, ...] = ()


# The builder's own command line, run with its view of the checkpoint's config corrected.
BUILDER_MODULE = "maap_trainer.export.builder_main"


def builder_command(request: BuildRequest, cache_dir: Path) -> list[str]:
    command = [
        sys.executable, "-m", BUILDER_MODULE,
        "--input", str(request.checkpoint),
        "--output", str(request.output),
        "--precision", request.precision,
        "--execution_provider", request.execution_provider,
        "--cache_dir", str(cache_dir),
    ]  # fmt: skip
    options = list(request.extra_options)
    if request.precision in AUTO_QUANTIZATION:
        algorithm = request.quantization
        if algorithm == "auto":
            algorithm = AUTO_QUANTIZATION[request.precision]
        options.append(f"algo_config={algorithm}")
    # Never reach for the Hugging Face hub: the checkpoint is a local directory.
    options.append("hf_token=false")
    return [*command, "--extra_options", *options]


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").replace("\r", "\n")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(line[:300] for line in kept[-lines:])


def build(request: BuildRequest, log_path: Path) -> float:
    """Build into request.output (replaced if present); return the seconds it took."""
    shutil.rmtree(request.output, ignore_errors=True)
    cache = request.output.with_name(request.output.name + ".cache")
    command = builder_command(request, cache)
    started = time.monotonic()
    with log_path.open("a", encoding="utf-8") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    shutil.rmtree(cache, ignore_errors=True)
    if done.returncode != 0 or not (request.output / "genai_config.json").is_file():
        raise ExportError(
            f"export: the ONNX Runtime GenAI builder failed for {request.precision} on "
            f"{request.execution_provider} (exit {done.returncode}); see {log_path}: "
            f"{_tail(log_path)}"
        )
    return time.monotonic() - started


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
CHAT_TEMPLATE = "chat_template.jinja"


def keep_tokenizer(checkpoint: Path, exported: Path) -> list[str]:
    """Make sure the export carries the tokenizer and chat template of the checkpoint.

    The builder copies them today; copying what is missing keeps the contract if a future
    builder does not. Returns the tokenizer files present in the export.
    """
    for name in (*TOKENIZER_FILES, CHAT_TEMPLATE, "special_tokens_map.json"):
        source, target = checkpoint / name, exported / name
        if source.is_file() and not target.is_file():
            shutil.copy2(source, target)
    if not (exported / "tokenizer.json").is_file():
        raise ExportError(
            f"export: {checkpoint} has no tokenizer.json, so the ONNX model could not get a "
            "tokenizer; save the tokenizer with the checkpoint"
        )
    return sorted(
        name
        for name in (*TOKENIZER_FILES, CHAT_TEMPLATE, "special_tokens_map.json")
        if (exported / name).is_file()
    )
