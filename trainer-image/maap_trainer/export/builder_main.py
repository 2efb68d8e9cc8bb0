"""`python -m maap_trainer.export.builder_main ARGS`: the ONNX Runtime GenAI model builder's own
command line (same arguments), with the builder's reading of the checkpoint's config made to
agree with what transformers runs, where the two disagree.

The builder reads a transformers config object to decide the graph; it loads the weights
separately, with a config transformers reads afresh, so only the graph's view changes here.
Each correction below is one the parity gate or the tiny-architecture tests caught
(tests/test_architectures.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

# Model types whose transformers code applies `sliding_window` to every layer when the
# config names no `layer_types` (modeling_mistral.py, modeling_phi3.py: a sliding-window
# causal mask whenever sliding_window is set).
_EVERY_LAYER_SLIDES = {"mistral", "phi3"}


def builder_view(config: Any) -> list[str]:
    """Correct `config` in place for the builder; say what changed, one line each."""
    changes = []
    model_type = getattr(config, "model_type", "")
    window = getattr(config, "sliding_window", None)
    named_layers = getattr(config, "layer_types", None) is not None
    if model_type in _EVERY_LAYER_SLIDES and window and not named_layers:
        if window >= config.max_position_embeddings:
            # A window no sequence can reach (Phi-3 128k: 262144): full attention exactly.
            config.sliding_window = None
            changes.append(f"sliding_window {window} >= the context: full attention")
        else:
            # The builder reads layer_types only: it built full attention, yet wrote a
            # sliding_window section by which the runtime sized every layer's cache, so any
            # sequence past the window (plus slack) failed in GroupQueryAttention.
            config.layer_types = ["sliding_attention"] * config.num_hidden_layers
            changes.append(f"sliding_window {window} on every layer, as transformers applies it")
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and "rope_type" not in rope and "full_attention" in rope:
        # transformers 5 nests Gemma 3's RoPE by layer type; the builder reads the flat form
        # (rope_type, rope_theta) and rope_local_base_freq for the sliding layers.
        config.rope_local_base_freq = rope.get("sliding_attention", {}).get("rope_theta", 10000.0)
        config.rope_parameters = dict(rope["full_attention"])
        config.rope_theta = config.rope_parameters.get("rope_theta", 10000.0)
        changes.append("rope_parameters by layer type, flattened (global; local theta apart)")
    elif isinstance(rope, dict) and rope.get("rope_type") == "longrope" and "type" not in rope:
        # The builder's Phi-3 LongRoPE reads rope_parameters["type"], which only configs
        # converted from the older rope_scaling carry.
        rope["type"] = "longrope"
        changes.append("rope_parameters.type longrope, as the builder reads it")
    return changes


def _corrected(get_hf_details: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    def get_details(*args: Any, **kwargs: Any) -> dict[str, Any]:
        details = get_hf_details(*args, **kwargs)
        for change in builder_view(details["hf_config"]):
            print(f"maap: builder config: {change}", flush=True)
        return details

    return get_details


def main() -> None:
    from onnxruntime_genai.models import builder

    if not hasattr(builder, "get_hf_details"):
        sys.exit(
            "maap: this onnxruntime-genai builder has no get_hf_details; update "
            "maap_trainer/export/builder_main.py for it"
        )
    builder.get_hf_details = _corrected(builder.get_hf_details)
    # The builder module's own `__main__` block, which runpy would run without the correction.
    args = builder.get_args()
    extra_options = builder.parse_extra_options(
        args.model_name, args.input, args.output, args.precision, args.execution_provider,
        args.cache_dir, args.extra_options,
        builder_config_version=args.builder_config_version,
        target_options=args.target_options, drafter_options=args.drafter_options,
        speculative_options=args.speculative_options, runtime_config=args.runtime_config,
        search=args.search,
    )  # fmt: skip
    builder.create_model(
        args.model_name, args.input, args.output, args.precision, args.execution_provider,
        args.cache_dir, **extra_options,
    )  # fmt: skip


if __name__ == "__main__":
    main()
