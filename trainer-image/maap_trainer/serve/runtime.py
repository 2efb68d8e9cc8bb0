"""An exported model loaded into ONNX Runtime GenAI: model, tokenizer, chat template, adapters.

The HTTP layer never touches onnxruntime_genai; it goes through this and the scheduler.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from maap_api.errors import ConfigError


class ModelRuntime:
    """Loads a GenAI export directory (genai_config.json, weights, tokenizer)."""

    def __init__(
        self, model_dir: Path, max_batch_size: int, adapters: Mapping[str, Path] | None = None
    ) -> None:
        import onnxruntime_genai as og

        # The serving pod has no route out; the library would otherwise try to send telemetry.
        og.disable_telemetry_events()
        self.og = og
        self.model_dir = model_dir
        genai_config = json.loads((model_dir / "genai_config.json").read_text(encoding="utf-8"))
        self.dynamic_batching = "dynamic_batching" in genai_config.get("engine", {})
        config = og.Config(str(model_dir))
        if not self.dynamic_batching:
            # The static engine batches the requests waiting when a batch starts.
            batching = {"static_batching": {"max_batch_size": max_batch_size}}
            config.overlay(json.dumps({"engine": batching}))
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        model_section = genai_config["model"]
        self.context_length = int(model_section.get("context_length", 2048))
        self.eos_token_ids = frozenset(_as_list(model_section.get("eos_token_id", [])))
        self.chat_template = _load_chat_template(model_dir)
        self.adapter_names: tuple[str, ...] = ()
        self.adapters: Any = None
        if adapters:
            self.adapters = og.Adapters(self.model)
            for name, path in adapters.items():
                if not path.is_file():
                    raise ConfigError(f"--adapter {name}={path}: no such file")
                self.adapters.load(str(path), name)
            self.adapter_names = tuple(adapters)

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        if self.chat_template is None:
            # No template shipped: a plain transcript the model can continue.
            turns = [f"{m['role']}: {m['content']}" for m in messages]
            return "\n".join([*turns, "assistant:"])
        return self.tokenizer.apply_chat_template(
            json.dumps(messages), template_str=self.chat_template, add_generation_prompt=True
        )

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def create_stream(self) -> Any:
        return self.tokenizer.create_stream()


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
