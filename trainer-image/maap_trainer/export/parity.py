"""The parity gate: does the ONNX export behave like the PyTorch model it came from?

Two measurements on the same token ids (the Hugging Face tokenizer's, so the models are
compared, not the tokenizers; the ONNX tokenizer is checked against it separately):

- greedy decoding of a fixed prompt set by both: exact matches, and how many of PyTorch's
  tokens ONNX reproduces before the first divergence;
- token agreement: ONNX's argmax at every position of PyTorch's greedy continuations
  (teacher-forced, so one early divergence does not count every later token as wrong);
- perplexity of both on the eval split (or a built-in text set without one).

fp32 must match token for token; fp16/int8/int4 must reach the spec's agreement and stay
under its perplexity increase.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maap_api.stage_config import ParitySpec

from maap_trainer.export.genai_build import ExportError

DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "Explain photosynthesis in one sentence.",
    "Write a haiku about the sea.",
    "How many legs does a spider have?",
    "Why is the sky blue?",
    "Give me three tips for learning Python.",
    "What is 12 times 7?",
    "Who wrote Romeo and Juliet?",
)

# Used for perplexity when the data set has no eval split.
DEFAULT_TEXTS = (
    "The water cycle describes how water evaporates from the surface of the earth, rises "
    "into the atmosphere, cools and condenses into clouds, and falls again as precipitation.",
    "A prime number is a natural number greater than one that has no positive divisors other "
    "than one and itself. The first few primes are two, three, five, seven and eleven.",
    "To make a cup of tea, boil fresh water, pour it over the tea leaves, let it steep for "
    "three to five minutes, then remove the leaves and add milk or lemon if you like.",
    "The French Revolution began in 1789 and led to the end of the monarchy, the rise of "
    "Napoleon, and lasting changes to the political landscape of Europe.",
)


@dataclass
class ScoredText:
    """Token ids and the positions whose next-token loss counts (labels, -100 = skip)."""

    input_ids: list[int]
    labels: list[int]


@dataclass
class ParityResult:
    precision: str
    prompts: int
    max_new_tokens: int
    exact_matches: int
    prefix_agreement: float
    token_agreement: float
    tokenizer_matches: bool
    perplexity_pytorch: float
    perplexity_onnx: float
    perplexity_tokens: int
    perplexity_source: str
    seconds: float
    first_mismatch: str | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    passed: bool = True
    failure: str | None = None

    @property
    def perplexity_increase(self) -> float:
        return self.perplexity_onnx / self.perplexity_pytorch - 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failure": self.failure,
            "prompts": self.prompts,
            "maxNewTokens": self.max_new_tokens,
            "exactMatches": self.exact_matches,
            "prefixAgreement": round(self.prefix_agreement, 4),
            "tokenAgreement": round(self.token_agreement, 4),
            "firstMismatch": self.first_mismatch,
            "tokenizerMatches": self.tokenizer_matches,
            "perplexity": {
                "pytorch": round(self.perplexity_pytorch, 4),
                "onnx": round(self.perplexity_onnx, 4),
                "relativeIncrease": round(self.perplexity_increase, 4),
                "tokens": self.perplexity_tokens,
                "source": self.perplexity_source,
            },
            "thresholds": self.thresholds,
            "seconds": round(self.seconds, 2),
        }


def judge(result: ParityResult, spec: ParitySpec) -> ParityResult:
    """Apply the spec's thresholds; the failure is one line naming the field to change."""
    if result.precision == "fp32":
        result.thresholds = {"exactMatches": result.prompts}
        if result.exact_matches < result.prompts:
            result.passed = False
            result.failure = (
                f"export.parity: fp32 ONNX must match PyTorch token for token, but "
                f"{result.prompts - result.exact_matches} of {result.prompts} greedy answers "
                f"differ ({result.first_mismatch}); the export is wrong, or set "
                "export.parity.enabled: false to skip the gate"
            )
        return result
    result.thresholds = {
        "minTokenAgreement": spec.min_token_agreement,
        "maxPerplexityIncrease": spec.max_perplexity_increase,
    }
    if result.token_agreement < spec.min_token_agreement:
        result.passed = False
        result.failure = (
            f"export.parity.minTokenAgreement: {result.precision} ONNX agrees with PyTorch on "
            f"{result.token_agreement:.1%} of greedy tokens, below {spec.min_token_agreement:.1%}; "
            "export at a higher precision, try export.quantization, or lower the threshold"
        )
    elif result.perplexity_increase > spec.max_perplexity_increase:
        result.passed = False
        result.failure = (
            f"export.parity.maxPerplexityIncrease: {result.precision} ONNX perplexity is "
            f"{result.perplexity_onnx:.3f} against PyTorch's {result.perplexity_pytorch:.3f} "
            f"(+{result.perplexity_increase:.1%}, limit +{spec.max_perplexity_increase:.1%}); "
            "export at a higher precision, try export.quantization, or raise the limit"
        )
    return result


def render_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[str]:
    if getattr(tokenizer, "chat_template", None):
        return [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in prompts
        ]
    return list(prompts)


def texts_from_strings(tokenizer: Any, texts: Sequence[str]) -> list[ScoredText]:
    scored = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        scored.append(ScoredText(list(ids), list(ids)))
    return scored


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


class TorchSide:
    """The merged checkpoint in fp32 PyTorch: greedy continuations and per-token losses."""

    def __init__(self, checkpoint: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.model: Any = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
        self.model.eval()
        config = self.model.generation_config
        eos = config.eos_token_id if config.eos_token_id is not None else []
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.tokenizer.eos_token_id)

    def release(self) -> None:
        """Free the model's memory (the tokenizer stays)."""
        self.model = None
        import gc

        gc.collect()

    def greedy(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        torch = self.torch
        ids = torch.tensor([prompt_ids])
        with torch.no_grad():
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                top_p=None,
                top_k=None,
                temperature=None,
                pad_token_id=next(iter(self.eos_ids), 0),
                eos_token_id=sorted(self.eos_ids),
            )
        return out[0, len(prompt_ids) :].tolist()

    def nll(self, texts: list[ScoredText], batch_size: int = 8) -> tuple[float, int]:
        """Summed next-token loss and the scored-token count, a padded batch at a time."""
        torch = self.torch
        total, count = 0.0, 0
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            width = max(len(t.input_ids) for t in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, text in enumerate(batch):  # right padding: real positions are unchanged
                n = len(text.input_ids)
                ids[row, :n] = torch.tensor(text.input_ids)
                labels[row, :n] = torch.tensor(text.labels)
                mask[row, :n] = 1
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            targets = labels[:, 1:]
            keep = targets != -100
            logprobs = torch.log_softmax(logits, dim=-1)
            picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            total += float(-(picked[keep]).sum())
            count += int(keep.sum())
        return total, count


class OnnxSide:
    """The exported model through ONNX Runtime GenAI, fed the same token ids."""

    def __init__(self, model_dir: Path, adapter: tuple[Path, str] | None = None) -> None:
        import numpy as np
        import onnxruntime_genai as og

        og.disable_telemetry_events()
        self.np, self.og = np, og
        from maap_trainer.cpus import usable_cpus
        from maap_trainer.kv_window import kv_window
        from maap_trainer.serve.runtime import model_config

        self.model = og.Model(model_config(og, model_dir, usable_cpus()))  # as served
        # Generators stop by token count: search.max_length only sizes the KV cache, which
        # a sliding-window layer needs at least a window long (kv_window.py).
        self.shortest_cache = kv_window(model_dir)
        self.tokenizer = og.Tokenizer(self.model)
        self.adapters = None
        self.adapter_name: str | None = None
        if adapter is not None:
            self.adapters = og.Adapters(self.model)
            self.adapters.load(str(adapter[0]), adapter[1])
            self.adapter_name = adapter[1]

    def _generator(self, max_length: int, **search: Any) -> Any:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=max(max_length, self.shortest_cache), **search)
        generator = self.og.Generator(self.model, params)
        if self.adapters is not None:
            generator.set_active_adapter(self.adapters, self.adapter_name)
        return generator

    def greedy(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        generator = self._generator(len(prompt_ids) + max_new_tokens, do_sample=False)
        generator.append_tokens(self.np.asarray(prompt_ids, dtype=self.np.int32))
        out: list[int] = []
        while not generator.is_done() and len(out) < max_new_tokens:
            generator.generate_next_token()
            out.append(int(generator.get_next_tokens()[0]))
        return out

    def logits(self, ids: list[int]) -> Any:
        """Logits at every position of `ids`, from one prefill."""
        generator = self._generator(len(ids) + 1)
        generator.append_tokens(self.np.asarray(ids, dtype=self.np.int32))
        return generator.get_output("logits")[0].astype(self.np.float64)

    def nll(self, text: ScoredText) -> tuple[float, int]:
        np = self.np
        logits = self.logits(text.input_ids)[:-1]
        targets = np.asarray(text.labels[1:])
        keep = targets != -100
        peak = logits.max(axis=-1, keepdims=True)
        logsumexp = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=-1))
        picked = logits[np.arange(len(targets)), np.clip(targets, 0, None)] - logsumexp
        return float(-(picked[keep]).sum()), int(keep.sum())

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]


def compare(
    torch_side: TorchSide,
    open_onnx: Callable[[], OnnxSide],
    precision: str,
    spec: ParitySpec,
    texts: list[ScoredText],
    text_source: str,
) -> ParityResult:
    """Measure everything the gate looks at (the thresholds are applied by `judge`).

    PyTorch runs first and is released before ONNX Runtime loads: the two never hold memory
    together, and ONNX Runtime's spinning worker threads never compete with PyTorch's.
    """
    import time

    started = time.monotonic()
    tokenizer = torch_side.tokenizer
    prompts = render_prompts(tokenizer, spec.prompts or DEFAULT_PROMPTS)
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    references = [torch_side.greedy(ids, spec.max_new_tokens) for ids in prompt_ids]
    nll_torch, tokens = torch_side.nll(texts)
    if tokens == 0:
        raise ExportError("export.parity: the perplexity texts have no token to score")
    torch_side.release()

    onnx_side = open_onnx()
    exact = reproduced = total = agreed = positions = 0
    tokenizer_matches = True
    first_mismatch: str | None = None
    for index, (prompt, ids, reference) in enumerate(
        zip(prompts, prompt_ids, references, strict=True)
    ):
        tokenizer_matches &= onnx_side.encode(prompt) == list(ids)
        candidate = onnx_side.greedy(ids, spec.max_new_tokens)
        same = _common_prefix(reference, candidate)
        if candidate == reference:
            exact += 1
        elif first_mismatch is None:
            first_mismatch = f"prompt {index + 1} differs at generated token {same + 1}"
        reproduced += same
        total += len(reference)
        if reference:
            predicted = onnx_side.logits(ids + reference).argmax(axis=-1)
            window = predicted[len(ids) - 1 : len(ids) - 1 + len(reference)]
            agreed += int((window == onnx_side.np.asarray(reference)).sum())
            positions += len(reference)
    nll_onnx = sum(onnx_side.nll(text)[0] for text in texts)
    return ParityResult(
        precision=precision,
        prompts=len(prompts),
        max_new_tokens=spec.max_new_tokens,
        exact_matches=exact,
        prefix_agreement=reproduced / total if total else 1.0,
        token_agreement=agreed / positions if positions else 1.0,
        tokenizer_matches=tokenizer_matches,
        perplexity_pytorch=math.exp(nll_torch / tokens),
        perplexity_onnx=math.exp(nll_onnx / tokens),
        perplexity_tokens=tokens,
        perplexity_source=text_source,
        seconds=time.monotonic() - started,
        first_mismatch=first_mismatch,
    )
