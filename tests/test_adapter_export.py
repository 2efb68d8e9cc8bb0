"""LoRA adapters as ONNX Runtime adapters: one base export, several fine-tunes, one server.

Two LoRA adapters are made on the base checkpoint without training (random, small B), so
each is a distinct "fine-tune" whose PyTorch answers are the reference.
"""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.adapter_fixtures import MAX_TOKENS, PROMPTS, FineTune, make_fine_tune, pytorch_answers
from tests.serving import running_server

pytestmark = pytest.mark.slow


def test_export_writes_a_slotted_base_and_an_adapter_that_reproduce_the_fine_tune(
    exported: tuple[Path, dict],
) -> None:
    out, info = exported
    adapter = info["adapter"]
    assert adapter["path"] == str(out / "adapters" / "base.onnx_adapter")
    assert adapter["modules"] == 30 * 7 and adapter["rank"] == [16]
    assert (out / "onnx-base" / "lora_slots.json").is_file()
    assert (out / "onnx-base" / "tokenizer.json").is_file()
    # Far smaller than a second merged model: only A and B, in fp32.
    assert adapter["sizeBytes"] < 0.1 * info["sizeBytes"]
    parity = adapter["parity"]
    assert parity["passed"] is True and parity["tokenAgreement"] >= 0.99, parity
    assert abs(parity["perplexity"]["relativeIncrease"]) < 1e-3, parity
    assert json.loads((out / "export.json").read_text())["adapter"] == adapter


def test_one_base_serves_several_fine_tunes_like_pytorch(
    base_model_dir: Path, exported: tuple[Path, dict], fine_tunes: list[FineTune], tmp_path: Path
) -> None:
    out, info = exported
    first, second = fine_tunes
    second_file = tmp_path / "second.onnx_adapter"
    done = subprocess.run(
        [sys.executable, "-m", "maap_trainer", "export-adapter",
         "--adapter-dir", str(second.adapter), "--base-checkpoint", str(base_model_dir),
         "--base-onnx", str(out / "onnx-base"), "--output", str(second_file)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["rank"] == [8] and report["modules"] == 30 * 3

    expected = {
        "base": pytorch_answers(base_model_dir),
        "first": pytorch_answers(first.merged),
        "second": pytorch_answers(second.merged),
    }
    assert expected["first"] != expected["base"] != expected["second"]
    with running_server(
        out / "onnx-base", tmp_path / "serve.log", "--model-name", "base",
        "--adapter", f"first={info['adapter']['path']}", "--adapter", f"second={second_file}",
    ) as srv:  # fmt: skip
        models = httpx.get(f"{srv.api}/models").json()["data"]
        assert [m["id"] for m in models] == ["base", "first", "second"]

        def ask(model_and_prompt: tuple[str, str]) -> str:
            model, prompt = model_and_prompt
            body = {"model": model, "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": MAX_TOKENS, "temperature": 0}  # fmt: skip
            response = httpx.post(f"{srv.api}/chat/completions", json=body, timeout=120)
            assert response.status_code == 200, response.text
            return response.json()["choices"][0]["message"]["content"]

        work = [(model, prompt) for model in expected for prompt in PROMPTS]
        with ThreadPoolExecutor(len(work)) as pool:  # adapters and base, all at once
            served = dict(zip(work, pool.map(ask, work), strict=True))
    for (model, prompt), text in served.items():
        assert text == expected[model][prompt], (model, prompt)


def test_adapters_that_are_not_additive_low_rank_are_refused(
    base_model_dir: Path, tmp_path: Path
) -> None:
    from maap_trainer.export import ExportError
    from maap_trainer.export.lora_adapter import read_peft_adapter

    dora = make_fine_tune(base_model_dir, tmp_path, "dora", seed=3, rank=4, use_dora=True)
    with pytest.raises(ExportError, match=r"^export.adapter: DoRA adapters rescale"):
        read_peft_adapter(base_model_dir, dora.adapter)
    head = make_fine_tune(base_model_dir, tmp_path, "head", seed=4, rank=4,
                          modules_to_save=["lm_head"])  # fmt: skip
    with pytest.raises(ExportError, match=r"^export.adapter: the adapter trains whole modules"):
        read_peft_adapter(base_model_dir, head.adapter)


def test_a_second_fine_tune_of_the_base_reuses_its_build_and_still_passes_the_gate(
    base_model_dir: Path, exported: tuple[Path, dict], fine_tunes: list[FineTune], tmp_path: Path
) -> None:
    """The base build is made once per model cache: the second fine-tune's adapter export
    copies it (no builder run), inserts its own slots, and the gate checks base + adapter
    against the fine-tune's own PyTorch model."""
    from tests.export_fixtures import TEST_PARITY, export_base

    first_out, _ = exported
    second = fine_tunes[1]
    out = tmp_path / "second"
    out.mkdir()
    (out / "adapter").symlink_to(second.adapter)
    (out / "merged").symlink_to(second.merged)
    run = export_base(
        base_model_dir, out, {"precision": "fp32", "adapter": True, "parity": TEST_PARITY}
    )
    adapter = run.info["adapter"]
    assert adapter["baseReused"] is True and adapter["baseSeconds"] == 0, adapter
    assert adapter["rank"] == [8] and adapter["modules"] == 30 * 3
    assert adapter["parity"]["passed"] is True, adapter["parity"]
    # The same weights; the graph differs by the slots (3 adapted modules, not 7).
    first_base, second_base = first_out / "onnx-base", out / "onnx-base"
    assert filecmp.cmp(first_base / "model.onnx.data", second_base / "model.onnx.data", False)
    first_slots = json.loads((first_base / "lora_slots.json").read_text())
    second_slots = json.loads((second_base / "lora_slots.json").read_text())
    assert len(second_slots["slots"]) < len(first_slots["slots"]), (first_slots, second_slots)


def test_a_cache_the_export_cannot_write_builds_the_base_in_place(
    base_model_dir: Path, tmp_path: Path
) -> None:
    """Stage pods mount the cluster's model cache read-only: the base is then built where
    the export wants it, uncached, instead of failing the export."""
    from maap_trainer.export.base_cache import build_from_cache
    from maap_trainer.export.genai_build import BuildRequest

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")  # mkdir under a file fails, as it does on a read-only volume
    output = tmp_path / "onnx-base.partial"
    request = BuildRequest(base_model_dir, output, "fp32", "cpu")
    built = build_from_cache(request, tmp_path / "export.log", blocker / "exports")
    assert built.reused is False and built.seconds > 0 and built.entry == output
    assert (output / "genai_config.json").is_file() and (output / "model.onnx").is_file()
