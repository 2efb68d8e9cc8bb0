"""An exported model loaded into ONNX Runtime GenAI: model, tokenizer, chat template, adapters.

The HTTP layer never touches onnxruntime_genai; it goes through this and the scheduler.
LoRA adapters need a base exported with LoRA slots (export.adapter: true writes
`lora_slots.json` beside it); they are loaded under a key and checked with a one-token
generation, since ONNX Runtime reads an adapter file without comparing it to the model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from maap_trainer.cpus import usable_cpus
from maap_trainer.kv_window import kv_window
from maap_trainer.serve.adapters import AdapterRejected, runtime_message

log = logging.getLogger("maap.serve.runtime")

# The longest sequence served when serving.maxContextLength is unset (the model's own
# context if shorter): TGI's and llama.cpp's older defaults were of this size too.
DEFAULT_CONTEXT_LENGTH = 4096

# What the export stage writes beside a base exported with LoRA slots (export.adapter: true).
LORA_SLOTS_FILE = "lora_slots.json"
NO_LORA_INPUTS = (
    "this model has no LoRA inputs, so it cannot take adapters; export it with "
    "export.adapter: true and serve its onnx-base/ directory"
)


class ModelRuntime:
    """Loads a GenAI export directory (genai_config.json, weights, tokenizer)."""

    def __init__(
        self,
        model_dir: Path,
        max_batch_size: int,
        threads: int | None = None,
        max_context_length: int | None = None,
    ) -> None:
        import onnxruntime_genai as og

        # The serving pod has no route out; the library would otherwise try to send telemetry.
        og.disable_telemetry_events()
        self.og = og
        self.model_dir = model_dir
        genai_config = json.loads((model_dir / "genai_config.json").read_text(encoding="utf-8"))
        self.dynamic_batching = "dynamic_batching" in genai_config.get("engine", {})
        self.threads = threads or usable_cpus()
        model_section = genai_config["model"]
        self.model_context_length = int(model_section.get("context_length", 2048))
        # The engine allocates each request's KV cache for search.max_length tokens up
        # front: the model's whole context (8192 for SmolLM2, 131072 for Phi-3 128k) cost
        # 360 MiB a request for a 135M model and ~30 ms of every first token.
        self.context_length = min(
            self.model_context_length, max_context_length or DEFAULT_CONTEXT_LENGTH
        )
        if max_context_length and max_context_length > self.model_context_length:
            log.warning(
                "serving.maxContextLength %d is over the model's context of %d tokens; serving %d",
                max_context_length,
                self.model_context_length,
                self.context_length,
            )
        # A sliding-window layer's cache must hold the whole window (kv_window.py), whatever
        # the served context; requests are still held to context_length, by token count.
        self.kv_window = kv_window(model_dir)
        self.kv_length = max(self.context_length, self.kv_window)
        # The static engine batches the requests waiting when a batch starts.
        engine = None if self.dynamic_batching else {"max_batch_size": max_batch_size}
        self.model = og.Model(
            model_config(og, model_dir, self.threads, engine, max_length=self.kv_length)
        )
        self.tokenizer = og.Tokenizer(self.model)
        self.eos_token_ids = frozenset(_as_list(model_section.get("eos_token_id", [])))
        self.chat_template = _load_chat_template(model_dir)
        self.has_lora_inputs = (model_dir / LORA_SLOTS_FILE).is_file()
        self.adapters: Any = og.Adapters(self.model) if self.has_lora_inputs else None

    def load_adapter(self, key: str, path: Path) -> None:
        """Load an .onnx_adapter under key, or raise AdapterRejected saying why not.

        Not thread-safe: call it before the scheduler starts, or on the scheduler's thread.
        """
        if self.adapters is None:
            raise AdapterRejected(NO_LORA_INPUTS)
        try:
            self.adapters.load(str(path), key)
        except Exception as exc:
            raise AdapterRejected(f"ONNX Runtime cannot load it: {runtime_message(exc)}") from None
        try:
            self._generate_one_token(key)
        except Exception as exc:
            self.adapters.unload(key)
            raise AdapterRejected(
                f"its tensors do not fit this model: {runtime_message(exc)}"
            ) from None

    def unload_adapter(self, key: str) -> None:
        """Raises while a generator still holds the adapter. Same thread rules as loading."""
        self.adapters.unload(key)

    def _generate_one_token(self, adapter_key: str) -> None:
        """A model run with the adapter's tensors as inputs: ONNX Runtime checks every name,
        shape and type against the graph's."""
        import numpy as np

        prompt = self.encode("Hello") or sorted(self.eos_token_ids)[:1] or [0]
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=max(len(prompt) + 1, self.kv_window), do_sample=False)
        generator = self.og.Generator(self.model, params)
        try:
            generator.set_active_adapter(self.adapters, adapter_key)
            generator.append_tokens(np.asarray(prompt, dtype=np.int32))
            generator.generate_next_token()
        finally:
            del generator  # releases the adapter, which may be unloaded next

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

    def token_text(self, token: int) -> str:
        """One token's own text (a piece of a multi-byte character decodes to U+FFFD)."""
        import numpy as np

        return str(self.tokenizer.decode(np.asarray([token], dtype=np.int32)))


def model_config(
    og: Any,
    model_dir: Path,
    threads: int | None,
    static_batching: dict[str, Any] | None = None,
    max_length: int | None = None,
) -> Any:
    """An export's og.Config as every model load here makes it (server, parity gate, bench):
    the intra-op thread count set (left unset, ONNX Runtime GenAI ran one thread on a 2-core
    machine: cpus.py; None leaves its default), the static engine's settings, if any, and
    the longest sequence (the KV cache the engine allocates per request; None: the model's
    whole context)."""
    config = og.Config(str(model_dir))
    overlay: dict[str, Any] = {}
    if threads is not None:
        overlay["model"] = {"decoder": {"session_options": {"intra_op_num_threads": threads}}}
    if static_batching is not None:
        overlay["engine"] = {"static_batching": static_batching}
    if max_length is not None:
        overlay["search"] = {"max_length": max_length}
    if overlay:
        config.overlay(json.dumps(overlay))
    return config


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
