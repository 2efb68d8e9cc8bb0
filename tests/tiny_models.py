"""Tiny random checkpoints of every architecture the presets and the GenAI builder cover.

Each is built with transformers' own config and model classes (no download), a few layers
wide enough for int4 blocks, with a real byte-level BPE tokenizer of a few hundred tokens
(SmolLM2's, retrained on the pirate data set, chat template and special tokens kept) saved
beside it. Sliding windows are short (WINDOW tokens): longer than the parity gate's
generators, shorter than the served prompt, so both sides of the window are exercised.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Longer than the gate's generators (a ~70-token chat prompt, the template's system turn
# included, plus 16 tokens), as Gemma 2's 4096 is; shorter than the served prompt (131).
WINDOW = 100
CONTEXT = 512
# Not a power of two: the builder takes any Linear with vocab_size outputs for the LM head,
# so a q_proj of 4 heads x 128 = 512 outputs would become it.
VOCAB = 600

_COMMON: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention, as every preset has
    "max_position_embeddings": CONTEXT,
    # Wider than the default 0.02: a random model's next-token distribution is then peaked
    # enough that fp32 rounding differences between PyTorch and ONNX Runtime never flip an
    # argmax, so the fp32 gate's token-for-token check stays meaningful.
    "initializer_range": 0.2,
    "tie_word_embeddings": False,
}


@dataclass(frozen=True)
class Architecture:
    """One architecture: its transformers config class name and what differs from _COMMON."""

    name: str
    config_class: str
    model_class: str
    settings: dict[str, Any]
    # The preset(s) of this architecture, or what real checkpoints of it users bring.
    stands_for: str

    def config(self, special: dict[str, int]) -> Any:
        import transformers

        cls: Callable[..., Any] = getattr(transformers, self.config_class)
        return cls(**{**_COMMON, **special, **self.settings})


def _longrope_factors(head_dim: int) -> dict[str, Any]:
    half = head_dim // 2
    return {
        "type": "longrope",  # as Phi-3 128k's config.json spells it (rope_scaling)
        # Real Phi-3 128k factors grow with the dimension; these do too (1.0 .. ~2.9).
        "short_factor": [1.0 + 0.02 * i for i in range(half)],
        "long_factor": [1.0 + 0.25 * i for i in range(half)],
    }


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("llama", "LlamaConfig", "LlamaForCausalLM", {},
                     "smollm2-135m-instruct, Llama 3"),
        Architecture("qwen2.5", "Qwen2Config", "Qwen2ForCausalLM",
                     # Qwen2's attention has q/k/v biases; its real configs tie small models.
                     {"tie_word_embeddings": True}, "qwen2.5-0.5b-instruct, Qwen2"),
        Architecture("qwen3", "Qwen3Config", "Qwen3ForCausalLM",
                     # Qwen3's heads are wider than hidden/heads (128 against 64), and q/k
                     # are RMS-normed.
                     {"head_dim": 32, "tie_word_embeddings": True}, "Qwen3"),
        Architecture("phi-3-4k", "Phi3Config", "Phi3ForCausalLM",
                     # Phi-3-mini-4k: sliding window just under the context on every layer.
                     {"sliding_window": WINDOW, "original_max_position_embeddings": CONTEXT},
                     "phi-3-mini-4k-instruct, phi-3-medium-4k-instruct"),
        Architecture("phi-3-128k", "Phi3Config", "Phi3ForCausalLM",
                     # LongRoPE: the long factors apply past 64 positions, which the gate's
                     # eval rows and the served answer reach.
                     {"original_max_position_embeddings": 64, "rope_theta": 10000.0,
                      "rope_scaling": _longrope_factors(16)},
                     "phi-3-mini-128k-instruct"),
        Architecture("mistral", "MistralConfig", "MistralForCausalLM",
                     {"sliding_window": WINDOW}, "Mistral 7B v0.1 (sliding window)"),
        Architecture("gemma2", "Gemma2Config", "Gemma2ForCausalLM",
                     # Alternating sliding/global layers, soft-capped logits, as Gemma 2 has.
                     {"sliding_window": WINDOW, "head_dim": 16, "query_pre_attn_scalar": 16,
                      "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                      "tie_word_embeddings": True}, "Gemma 2"),
        Architecture("gemma3", "Gemma3TextConfig", "Gemma3ForCausalLM",
                     # Two sliding layers, then a global one (Gemma 3's 5:1, shortened).
                     {"num_hidden_layers": 3, "sliding_window": WINDOW,
                      "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
                      "head_dim": 16, "query_pre_attn_scalar": 16, "tie_word_embeddings": True},
                     "Gemma 3"),
    )
}  # fmt: skip


def train_tokenizer(base_tokenizer_dir: Path, texts: list[str], out: Path) -> Path:
    """SmolLM2's tokenizer retrained to VOCAB tokens on `texts`: same byte-level BPE, same
    special tokens and chat template, so both transformers and ONNX Runtime GenAI load it."""
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    tokenizer = base.train_new_from_iterator(texts, vocab_size=VOCAB)
    tokenizer.chat_template = base.chat_template
    tokenizer.save_pretrained(out)
    return out


def special_ids(tokenizer: Any) -> dict[str, int]:
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    return {"bos_token_id": start, "eos_token_id": end, "pad_token_id": end}


def build_checkpoint(architecture: Architecture, tokenizer_dir: Path, out: Path) -> Path:
    """A random checkpoint of `architecture` (seeded) with the tokenizer saved beside it."""
    import torch
    import transformers
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = special_ids(tokenizer)
    config = architecture.config(ids)
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    model = getattr(transformers, architecture.model_class)(config).eval()
    model.generation_config = GenerationConfig(**ids)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    saved = json.loads((out / "config.json").read_text())
    assert saved["architectures"] == [architecture.model_class], saved["architectures"]
    heads = [m for n, m in model.named_modules() if n != "lm_head" and hasattr(m, "out_features")]
    assert all(m.out_features != config.vocab_size for m in heads), "see VOCAB"
    return out
