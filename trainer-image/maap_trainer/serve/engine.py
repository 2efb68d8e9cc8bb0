"""Token generation with ONNX Runtime GenAI, one request at a time per engine.

The HTTP layer (server.py) stays free of onnxruntime details; this module turns a prompt
and sampling options into a stream of text pieces plus token counts.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class SamplingOptions:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


@dataclass
class GenerationResult:
    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: str = "length"


class Engine:
    """Loads an exported model directory (genai_config.json, weights, tokenizer)."""

    def __init__(self, model_dir: Path) -> None:
        import onnxruntime_genai as og

        self._og = og
        self.model_dir = model_dir
        self.model = og.Model(str(model_dir))
        self.tokenizer = og.Tokenizer(self.model)
        config = json.loads((model_dir / "genai_config.json").read_text(encoding="utf-8"))
        self.context_length = int(config["model"].get("context_length", 2048))
        self.eos_token_ids = _as_list(config["model"].get("eos_token_id", []))
        self._chat_template = _load_chat_template(model_dir)
        self._lock = threading.Lock()

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        if self._chat_template is None:
            # No template shipped: a plain transcript the model can continue.
            turns = [f"{m['role']}: {m['content']}" for m in messages]
            return "\n".join([*turns, "assistant:"])
        return self.tokenizer.apply_chat_template(
            json.dumps(messages), template_str=self._chat_template, add_generation_prompt=True
        )

    def count_tokens(self, prompt: str) -> int:
        return len(self.tokenizer.encode(prompt))

    def generate(
        self, prompt: str, options: SamplingOptions, result: GenerationResult
    ) -> Iterator[str]:
        """Yield text pieces as they are decoded; fill `result` as it goes."""
        og = self._og
        input_ids = self.tokenizer.encode(prompt)
        result.prompt_tokens = len(input_ids)
        with self._lock:
            params = og.GeneratorParams(self.model)
            search: dict[str, Any] = {
                "max_length": min(self.context_length, len(input_ids) + options.max_tokens),
            }
            if options.temperature > 0:
                search.update(
                    do_sample=True,
                    temperature=options.temperature,
                    top_p=options.top_p,
                    top_k=options.top_k,
                )
                if options.seed is not None:
                    search["random_seed"] = options.seed
            else:
                search["do_sample"] = False
            params.set_search_options(**search)
            generator = og.Generator(self.model, params)
            generator.append_tokens(input_ids)
            stream = self.tokenizer.create_stream()
            text = ""
            while not generator.is_done():
                generator.generate_next_token()
                token = int(generator.get_next_tokens()[0])
                if token in self.eos_token_ids:
                    result.finish_reason = "stop"
                    break
                result.completion_tokens += 1
                piece = stream.decode(token)
                if not piece:
                    continue
                text += piece
                hit = _first_stop(text, options.stop)
                if hit is not None:
                    # Emit what precedes the stop sequence, never the sequence itself.
                    emitted = len(text) - len(piece)
                    if hit > emitted:
                        yield text[emitted:hit]
                    result.finish_reason = "stop"
                    return
                yield piece
                if result.completion_tokens >= options.max_tokens:
                    result.finish_reason = "length"
                    return
            else:
                # The generator stopped by itself: end of sequence or the context is full.
                if result.completion_tokens < options.max_tokens:
                    result.finish_reason = "stop"


def _first_stop(text: str, stops: list[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def _as_list(value: Any) -> list[int]:
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _load_chat_template(model_dir: Path) -> str | None:
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
    jinja = model_dir / "chat_template.jinja"
    return jinja.read_text(encoding="utf-8") if jinja.is_file() else None
