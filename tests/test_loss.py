"""The supervised-positions loss equals the model's own loss, and so do its gradients."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from maap_api.errors import ConfigError  # noqa: E402
from maap_trainer.train.loss import SupervisedPositionsLoss  # noqa: E402
from maap_trainer.train.run import cpu_has_native_bf16, resolve_precision  # noqa: E402

IGNORE = -100


def tiny_llama(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return transformers.LlamaForCausalLM(config).eval()


def padded_batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(0, 97, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # padding
    mask[2, 5:] = 0
    labels = ids.clone()
    labels[:, :4] = IGNORE  # the prompt
    labels[mask == 0] = IGNORE
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def packed_batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    ids = torch.randint(0, 97, (1, 14))
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 7]])
    labels = ids.clone()
    labels[0, [0, 1, 2, 6, 7, 8]] = IGNORE  # prompts; row starts carry no label
    return {"input_ids": ids, "position_ids": positions, "labels": labels}


def grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("make_batch", [padded_batch, packed_batch], ids=["padded", "packed"])
@pytest.mark.parametrize("num_items", [None, 7])
def test_loss_and_gradients_match_the_models_own(make_batch, num_items) -> None:
    batch = make_batch()
    reference = tiny_llama()
    kwargs = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    expected = reference(**batch, **kwargs).loss
    expected.backward()

    model = tiny_llama()
    loss_fn = SupervisedPositionsLoss()
    loss_fn.attach(model)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    loss_fn.arm(batch["labels"])
    outputs = model(**inputs)
    supervised = int((batch["labels"][:, 1:] != IGNORE).sum())
    assert outputs.logits.shape == (supervised, 97)  # the head ran on labelled positions only
    got = loss_fn(outputs, batch["labels"], num_items_in_batch=kwargs.get("num_items_in_batch"))
    loss_fn.disarm()
    got.backward()

    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads(model), grads(reference), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


def test_disarmed_hook_leaves_the_model_alone() -> None:
    model = tiny_llama()
    loss_fn = SupervisedPositionsLoss()
    loss_fn.attach(model)
    batch = padded_batch()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (3, 12, 97)
    loss_fn.detach()
    with pytest.raises(RuntimeError, match="outside compute_loss"):
        loss_fn({"logits": logits}, batch["labels"])


def test_batch_without_labels_gives_zero_loss_with_a_graph() -> None:
    model = tiny_llama()
    loss_fn = SupervisedPositionsLoss()
    loss_fn.attach(model)
    batch = padded_batch()
    labels = torch.full_like(batch["labels"], IGNORE)
    loss_fn.arm(labels)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    loss = loss_fn(out, labels)
    assert loss.item() == 0.0 and loss.requires_grad


def test_cpu_precision_follows_the_hardware() -> None:
    assert resolve_precision("auto", on_gpu=False, cpu_bf16=True) == "bf16"
    assert resolve_precision("auto", on_gpu=False, cpu_bf16=False) == "fp32"
    # DeepSpeed's bf16 mode would keep bf16 weights on CPU: auto stays fp32 there.
    assert resolve_precision("auto", on_gpu=False, deepspeed=True, cpu_bf16=True) == "fp32"
    assert resolve_precision("bf16", on_gpu=False, cpu_bf16=True) == "bf16"
    assert resolve_precision("fp32", on_gpu=False, cpu_bf16=True) == "fp32"
    with pytest.raises(ConfigError, match=r"training.precision: bf16 needs a GPU or a CPU with"):
        resolve_precision("bf16", on_gpu=False, cpu_bf16=False)
    with pytest.raises(ConfigError, match=r"training.precision: bf16 under DeepSpeed on CPU"):
        resolve_precision("bf16", on_gpu=False, deepspeed=True, cpu_bf16=True)
    with pytest.raises(ConfigError, match=r"training.precision: fp16 needs a GPU"):
        resolve_precision("fp16", on_gpu=False, cpu_bf16=True)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n")
    assert cpu_has_native_bf16(info)
    info.write_text("flags\t\t: fpu avx2 fma\n")
    assert not cpu_has_native_bf16(info)
    assert not cpu_has_native_bf16(tmp_path / "missing")


def test_training_arguments_group_by_length_unless_extra_args_say_otherwise(tmp_path: Path):
    from maap_api.stage_config import TrainerConfig
    from maap_trainer.train.run import training_arguments

    def arguments(training: dict, precision: str = "fp32"):
        cfg = TrainerConfig.model_validate(
            {
                "jobName": "t",
                "model": {"preset": "smollm2-135m-instruct"},
                "dataset": {"path": "data.jsonl"},
                "training": training,
                "outputDir": str(tmp_path),
            }
        )
        return training_arguments(cfg, tmp_path, precision, False, None, False, False)

    assert arguments({}).train_sampling_strategy == "group_by_length"
    undone = arguments({"extraArgs": {"train_sampling_strategy": "random"}})
    assert undone.train_sampling_strategy == "random"
    assert arguments({}, "bf16").bf16 and not arguments({}).bf16
