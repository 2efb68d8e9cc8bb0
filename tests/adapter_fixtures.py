"""Two LoRA fine-tunes of the base checkpoint made without training, and the adapter export
of the first: shared (session-wide, registered in tests/conftest.py) by the adapter export
tests and the model server's adapter admin tests, so the fine-tunes and the export are
built once per run.

Each adapter is random with a small B, so each is a distinct "fine-tune" whose PyTorch
answers are the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.export_fixtures import TEST_PARITY, export_base

PROMPTS = ["What is the capital of France?", "Name a fruit.", "Why do cats purr?"]
MAX_TOKENS = 12


@dataclass
class FineTune:
    name: str
    adapter: Path
    merged: Path


def make_fine_tune(
    base: Path, root: Path, name: str, seed: int, rank: int, scale: float = 0.05, **lora
) -> FineTune:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = {"target_modules": "all-linear", **lora}
    config = LoraConfig(r=rank, lora_alpha=2 * rank, init_lora_weights=False,
                        task_type="CAUSAL_LM", **lora)  # fmt: skip
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # a small, real change of behaviour
        for module_name, param in peft_model.named_parameters():
            if "lora_B" in module_name:
                param.mul_(scale)
    tokenizer = AutoTokenizer.from_pretrained(base)
    peft_model.save_pretrained(root / name / "adapter")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(root / name / "merged")
    tokenizer.save_pretrained(root / name / "merged")
    return FineTune(name, root / name / "adapter", root / name / "merged")


def pytorch_answers(checkpoint: Path) -> dict[str, str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    answers = {}
    for prompt in PROMPTS:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)  # fmt: skip
        answers[prompt] = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    return answers


@pytest.fixture(scope="session")
def fine_tunes(base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[FineTune]:
    root = tmp_path_factory.mktemp("fine-tunes")
    return [
        make_fine_tune(base_model_dir, root, "first", seed=1, rank=16),
        make_fine_tune(base_model_dir, root, "second", seed=2, rank=8, scale=0.3,
                       target_modules=["q_proj", "v_proj", "down_proj"]),
    ]  # fmt: skip


@pytest.fixture(scope="session")
def exported(
    base_model_dir: Path, fine_tunes: list[FineTune], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict]:
    """The export stage with export.adapter on, for the first fine-tune (fp32)."""
    out = tmp_path_factory.mktemp("job")
    first = fine_tunes[0]
    (out / "adapter").symlink_to(first.adapter)
    (out / "merged").symlink_to(first.merged)
    run = export_base(
        base_model_dir, out, {"precision": "fp32", "adapter": True, "parity": TEST_PARITY}
    )
    return out, run.info
