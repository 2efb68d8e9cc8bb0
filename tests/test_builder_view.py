"""The builder's view of a checkpoint's config (export/builder_main.py) and the KV cache floor
of sliding-window exports (kv_window.py), on real transformers configs; the exports they make
right are in tests/test_architectures.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

from maap_trainer.export.builder_main import builder_view  # noqa: E402
from maap_trainer.kv_window import kv_window  # noqa: E402

SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 600}  # fmt: skip


@pytest.mark.parametrize("config_class", ["MistralConfig", "Phi3Config"])
def test_a_window_transformers_applies_to_every_layer_is_given_to_every_layer(
    config_class: str,
) -> None:
    config = getattr(transformers, config_class)(
        **SMALL, sliding_window=2047, max_position_embeddings=4096
    )
    assert getattr(config, "layer_types", None) is None
    expected = "sliding_window 2047 on every layer, as transformers applies it"
    assert builder_view(config) == [expected]
    assert config.layer_types == ["sliding_attention"] * 3


def test_a_window_longer_than_the_context_is_dropped() -> None:
    # Phi-3-mini-128k: sliding_window 262144 over a 131072 context; a windowed cache would
    # have to be 262144 long for every request.
    config = transformers.Phi3Config(**SMALL, sliding_window=262144, max_position_embeddings=131072)
    assert builder_view(config) == ["sliding_window 262144 >= the context: full attention"]
    assert config.sliding_window is None and getattr(config, "layer_types", None) is None


@pytest.mark.parametrize(
    "config",
    [
        lambda: transformers.LlamaConfig(**SMALL),
        lambda: transformers.Qwen2Config(**SMALL),
        lambda: transformers.MistralConfig(**SMALL, sliding_window=None),
        # Gemma 2 names its layer types itself: left as it is.
        lambda: transformers.Gemma2Config(**SMALL, head_dim=16, sliding_window=100),
    ],
    ids=["llama", "qwen2", "mistral-no-window", "gemma2"],
)
def test_configs_the_builder_reads_right_are_left_alone(config) -> None:
    made = config()
    before = made.to_dict()
    assert builder_view(made) == []
    assert made.to_dict() == before


def test_gemma3_rope_by_layer_type_is_flattened_for_the_builder() -> None:
    config = transformers.Gemma3TextConfig(**SMALL, head_dim=16, sliding_window=100)
    assert set(config.rope_parameters) == {"full_attention", "sliding_attention"}
    assert builder_view(config) == [
        "rope_parameters by layer type, flattened (global; local theta apart)"
    ]
    assert config.rope_parameters["rope_type"] == "default"
    assert config.rope_theta == config.rope_parameters["rope_theta"] == 1_000_000.0
    assert config.rope_local_base_freq == 10_000.0


def test_longrope_gets_the_type_key_the_builder_reads() -> None:
    factors = [1.0] * 8
    config = transformers.Phi3Config(
        **SMALL, max_position_embeddings=1024,
        original_max_position_embeddings=64,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                         "short_factor": factors, "long_factor": factors},
    )  # fmt: skip
    assert "type" not in config.rope_parameters  # made from keyword arguments, not rope_scaling
    assert builder_view(config) == ["rope_parameters.type longrope, as the builder reads it"]
    assert config.rope_parameters["type"] == "longrope"


def _export(tmp_path: Path, decoder: dict) -> Path:
    (tmp_path / "genai_config.json").write_text(json.dumps({"model": {"decoder": decoder}}))
    return tmp_path


def test_kv_window_is_the_window_of_the_windowed_layers(tmp_path: Path) -> None:
    window = {"window_size": 4096, "layers": [0, 2, 4], "cache_slack": 0}
    assert kv_window(_export(tmp_path, {"sliding_window": window})) == 4096
    # An older Mistral/Phi-3 export: a window section with no windowed layer.
    assert kv_window(_export(tmp_path, {"sliding_window": {**window, "layers": []}})) == 0
    assert kv_window(_export(tmp_path, {"head_size": 64})) == 0
