"""Classification and token-classification (NER) models to ONNX with torch.onnx.

The GenAI builder is for decoders that generate; an encoder with a classification head is
one forward pass, exported as a plain ONNX graph (dynamic batch and sequence) and run with
onnxruntime. Written beside it: the tokenizer, config.json (id2label) and
`maap_classifier.json`, which tells the server what it serves.

fp32, or int8 (onnxruntime's dynamic weight quantization). Parity: the same texts through
PyTorch and ONNX Runtime; fp32 must pick the same label everywhere (and logits within
1e-3), int8 must reach the spec's agreement.
"""

from __future__ import annotations

import inspect
import json
import shutil
import time
from pathlib import Path
from typing import Any

from maap_api.stage_config import ParitySpec

from maap_trainer.export.genai_build import ExportError

CLASSIFIER_FILE = "maap_classifier.json"
MODEL_FILE = "model.onnx"
AUTO_CLASSES = {
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
}
PRECISIONS = ("fp32", "int8")
PARITY_TEXTS = (
    "My invoice shows a charge I do not recognise.",
    "The parcel never arrived and tracking has not moved for a week.",
    "Angela Merkel met Emmanuel Macron in Paris on Tuesday.",
    "I cannot log in to my account since the last update.",
    "Apple opened a new office in Berlin.",
)


def load_torch_classifier(checkpoint: Path, task: str) -> tuple[Any, Any]:
    import transformers

    if task not in AUTO_CLASSES:
        raise ExportError(f"training.task: {task} has no classifier export")
    model = getattr(transformers, AUTO_CLASSES[task]).from_pretrained(checkpoint).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    return model.float(), tokenizer


def export_classifier(
    checkpoint: Path, output: Path, task: str, precision: str, log_path: Path
) -> dict[str, Any]:
    """Write the ONNX classifier into `output` (replaced); return what export.json records."""
    import torch

    if precision not in PRECISIONS:
        raise ExportError(
            f"export.precision: {precision} is for generative models; a classifier exports "
            f"as {' or '.join(PRECISIONS)}"
        )
    model, tokenizer = load_torch_classifier(checkpoint, task)
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    # Positional export arguments follow forward()'s order, not the tokenizer's.
    accepted = inspect.signature(model.forward).parameters
    inputs = [n for n in accepted if n in tokenizer.model_input_names]
    sample = tokenizer(["a short text", "a somewhat longer text to pad"], padding=True,
                       return_tensors="pt")  # fmt: skip
    axes = {name: {0: "batch", 1: "sequence"} for name in inputs}
    axes["logits"] = {0: "batch"} if task == "text-classification" else {0: "batch", 1: "sequence"}
    started = time.monotonic()
    fp32_path = output / (MODEL_FILE if precision == "fp32" else "model.fp32.onnx")
    with log_path.open("a", encoding="utf-8") as log, torch.no_grad():
        log.write(f"torch.onnx.export {checkpoint} -> {fp32_path} ({task})\n")
        # The TorchScript exporter: it needs no onnxscript and handles these encoders.
        torch.onnx.export(
            model,
            tuple(sample[name] for name in inputs),
            str(fp32_path),
            input_names=inputs,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(fp32_path, output / MODEL_FILE, weight_type=QuantType.QInt8)
        fp32_path.unlink()
    seconds = time.monotonic() - started
    tokenizer.save_pretrained(output)
    model.config.save_pretrained(output)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    manifest = {
        "task": task,
        "labels": labels,
        "inputs": inputs,
        "maxLength": min(int(tokenizer.model_max_length or 512), 512),
        "precision": precision,
    }
    (output / CLASSIFIER_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return {"seconds": round(seconds, 2), "task": task, "labels": labels}


def classifier_parity(
    checkpoint: Path, exported: Path, task: str, precision: str, spec: ParitySpec,
    texts: list[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """PyTorch logits against ONNX Runtime logits on the same tokenized texts."""
    import numpy as np
    import onnxruntime as ort
    import torch

    model, tokenizer = load_torch_classifier(checkpoint, task)
    texts = texts or list(PARITY_TEXTS)
    started = time.monotonic()
    # PyTorch first, then ONNX Runtime: its spinning threads never compete with PyTorch's.
    feeds, references = [], []
    for text in texts:
        encoded = tokenizer([text], return_tensors="np", truncation=True, max_length=512)
        feed = {n: encoded[n].astype(np.int64) for n in encoded if n in tokenizer.model_input_names}
        with torch.no_grad():
            references.append(model(**{n: torch.from_numpy(v) for n, v in feed.items()}).logits)
        feeds.append(feed)
    del model
    session = ort.InferenceSession(str(exported / MODEL_FILE), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    agree = total = 0
    max_diff = 0.0
    for feed, reference in zip(feeds, references, strict=True):
        onnx_logits = session.run(["logits"], {n: feed[n] for n in names})[0]
        torch_logits = reference.numpy()
        max_diff = max(max_diff, float(np.abs(onnx_logits - torch_logits).max()))
        same = onnx_logits.argmax(-1) == torch_logits.argmax(-1)
        agree += int(same.sum())
        total += same.size
    agreement = agree / total
    report: dict[str, Any] = {
        "texts": len(texts),
        "labelAgreement": round(agreement, 4),
        "maxLogitDifference": max_diff,
        "seconds": round(time.monotonic() - started, 2),
        "passed": True,
        "failure": None,
    }
    if precision == "fp32" and (agreement < 1.0 or max_diff > 1e-3):
        report["passed"] = False
        report["failure"] = (
            f"export.parity: the fp32 ONNX classifier differs from PyTorch (label agreement "
            f"{agreement:.1%}, largest logit difference {max_diff:.2g}); set "
            "export.parity.enabled: false to skip the gate"
        )
    elif precision != "fp32" and agreement < spec.min_token_agreement:
        report["passed"] = False
        report["failure"] = (
            f"export.parity.minTokenAgreement: the {precision} ONNX classifier picks PyTorch's "
            f"label for {agreement:.1%} of inputs, below {spec.min_token_agreement:.1%}; "
            "export fp32 or lower the threshold"
        )
    return report
