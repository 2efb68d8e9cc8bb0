"""Classifier export (torch.onnx) and /v1/classify, on MiniLM checkpoints with fresh heads.

The heads are random but decisive (scaled up), so PyTorch's labels are a sharp reference
the ONNX model must reproduce.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.serving import running_server

SEQ_LABELS = ["billing", "shipping", "technical"]
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
TEXTS = [
    "My invoice shows a charge I do not recognise.",
    "The parcel never arrived.",
    "The app crashes when I open settings.",
]


def test_iob2_tags_become_entities() -> None:
    from maap_trainer.serve.classify import entities

    text = "Angela Merkel met Macron in Paris"
    words = [
        ("Angela", 0, 6, "B-PER"), ("Merkel", 7, 13, "I-PER"), ("met", 14, 17, "O"),
        ("Macron", 18, 24, "I-PER"), ("in", 25, 27, "O"), ("Paris", 28, 33, "B-LOC"),
    ]  # fmt: skip
    tagged = [{"word": w, "start": s, "end": e, "label": t, "score": 0.5} for w, s, e, t in words]
    assert [(e["entity"], e["text"]) for e in entities(text, tagged)] == [
        ("PER", "Angela Merkel"), ("PER", "Macron"), ("LOC", "Paris")]  # fmt: skip


@dataclass
class Classifier:
    checkpoint: Path
    task: str
    labels: list[str]


def make_classifier(root: Path, task: str, labels: list[str]) -> Classifier:
    import torch
    import transformers
    from maap_api.stage_config import ModelSource
    from maap_trainer.model_prep import prepare_base_model

    base = prepare_base_model(ModelSource(preset="all-minilm-l6-v2"))
    auto = {"text-classification": transformers.AutoModelForSequenceClassification,
            "token-classification": transformers.AutoModelForTokenClassification}[task]  # fmt: skip
    torch.manual_seed(0)
    model = auto.from_pretrained(
        base, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )  # fmt: skip
    with torch.no_grad():  # a decisive head: labels far from ties
        model.classifier.weight.mul_(200.0)
    target = root / task
    model.save_pretrained(target)
    transformers.AutoTokenizer.from_pretrained(base).save_pretrained(target)
    return Classifier(target, task, labels)


def pytorch_labels(c: Classifier, texts: list[str]) -> list[str] | list[list[str]]:
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(c.checkpoint)
    if c.task == "text-classification":
        model = transformers.AutoModelForSequenceClassification.from_pretrained(c.checkpoint)
        with torch.no_grad():
            logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
        return [c.labels[i] for i in logits.argmax(-1).tolist()]
    model = transformers.AutoModelForTokenClassification.from_pretrained(c.checkpoint)
    out = []
    for text in texts:
        enc = tokenizer(text.split(), is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            best = model(**enc).logits[0].argmax(-1).tolist()
        firsts, seen = [], set()
        for position, word in enumerate(enc.word_ids()):
            if word is not None and word not in seen:
                seen.add(word)
                firsts.append(c.labels[best[position]])
        out.append(firsts)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Classifier, Path, dict]]:
    from maap_api.stage_config import ParitySpec
    from maap_trainer.export.classifier import classifier_parity, export_classifier

    root = tmp_path_factory.mktemp("classifiers")
    done = {}
    for task, labels in (("text-classification", SEQ_LABELS),
                         ("token-classification", NER_LABELS)):  # fmt: skip
        c = make_classifier(root, task, labels)
        out = root / f"{task}-onnx"
        info = export_classifier(c.checkpoint, out, task, "fp32", root / "export.log")
        info["parity"] = classifier_parity(c.checkpoint, out, task, "fp32", ParitySpec())
        done[task] = (c, out, info)
    return done


@pytest.mark.slow
def test_fp32_classifiers_match_pytorch(exported: dict) -> None:
    for _task, (c, out, info) in exported.items():
        assert info["labels"] == c.labels
        parity = info["parity"]
        assert parity["passed"] and parity["labelAgreement"] == 1.0, parity
        assert parity["maxLogitDifference"] < 1e-3
        for name in ("model.onnx", "tokenizer.json", "config.json", "maap_classifier.json"):
            assert (out / name).is_file(), name


@pytest.mark.slow
def test_int8_classifier_is_smaller_and_gated(exported: dict, tmp_path: Path) -> None:
    from maap_api.stage_config import ParitySpec
    from maap_trainer.export.classifier import classifier_parity, export_classifier
    from maap_trainer.export.genai_build import ExportError

    c, fp32_dir, _ = exported["text-classification"]
    out = tmp_path / "int8"
    export_classifier(c.checkpoint, out, c.task, "int8", tmp_path / "log")
    assert (out / "model.onnx").stat().st_size < 0.5 * (fp32_dir / "model.onnx").stat().st_size
    parity = classifier_parity(c.checkpoint, out, c.task, "int8", ParitySpec())
    assert parity["passed"], parity
    with pytest.raises(ExportError, match=r"^export\.precision: int4 is for generative models"):
        export_classifier(c.checkpoint, tmp_path / "int4", c.task, "int4", tmp_path / "log")


@pytest.mark.slow
def test_classify_endpoint_serves_both_tasks_like_pytorch(exported: dict, tmp_path: Path) -> None:
    seq, seq_dir, _ = exported["text-classification"]
    with running_server(seq_dir, tmp_path / "seq.log", "--model-name", "tickets") as srv:
        models = httpx.get(f"{srv.api}/models").json()["data"]
        assert models[0]["id"] == "tickets" and models[0]["labels"] == SEQ_LABELS
        reply = httpx.post(f"{srv.api}/classify", json={"input": TEXTS}).json()
        assert [r["label"] for r in reply["data"]] == pytorch_labels(seq, TEXTS)
        for result in reply["data"]:
            assert abs(sum(s["score"] for s in result["scores"]) - 1.0) < 1e-4
        assert reply["usage"]["prompt_tokens"] > len(TEXTS)
        single = httpx.post(f"{srv.api}/classify", json={"input": TEXTS[0]}).json()
        assert single["data"][0]["label"] == reply["data"][0]["label"]
        bad = [
            ({"input": []}, 400, "input"),
            ({"input": ["ok", "  "]}, 400, "input"),
            ({}, 400, "input"),
            ({"input": "word " * 600}, 400, "input.0"),
            ({"input": "x", "model": "other"}, 404, "model"),
        ]
        for body, status, param in bad:
            response = httpx.post(f"{srv.api}/classify", json=body)
            assert response.status_code == status, (body, response.text)
            assert response.json()["error"]["param"] == param, response.text
        wrong_endpoint = httpx.post(f"{srv.api}/chat/completions", json={"messages": []})
        assert wrong_endpoint.status_code == 404
        assert "no such endpoint" in wrong_endpoint.json()["error"]["message"]

    ner, ner_dir, _ = exported["token-classification"]
    sentence = "Angela Merkel visited Paris and Berlin last week"
    with running_server(ner_dir, tmp_path / "ner.log") as srv:
        reply = httpx.post(f"{srv.api}/classify", json={"input": sentence}).json()
    tokens = reply["data"][0]["tokens"]
    assert [t["word"] for t in tokens] == sentence.split()
    assert [t["label"] for t in tokens] == pytorch_labels(ner, [sentence])[0]
    for entity in reply["data"][0]["entities"]:
        assert sentence[entity["start"] : entity["end"]] == entity["text"]


@pytest.mark.slow
def test_export_stage_exports_a_classifier_job(exported: dict, tmp_path: Path) -> None:
    import os

    from maap_api.stage_config import TrainerConfig
    from maap_trainer.export import ExportError, run_export

    from tests.conftest import EXAMPLES

    seq, _, _ = exported["text-classification"]
    os.symlink(seq.checkpoint, tmp_path / "merged")
    job = {
        "jobName": "tickets",
        "model": {"preset": "all-minilm-l6-v2"},
        "dataset": {"path": str(EXAMPLES / "support-tickets" / "train.jsonl")},
        "training": {"task": "text-classification"},
        "method": {"type": "full"},
        "outputDir": str(tmp_path),
    }
    with pytest.raises(ExportError, match=r"^export\.precision: int4 is for generative"):
        run_export(TrainerConfig.model_validate(job))  # the default precision
    info = run_export(TrainerConfig.model_validate({**job, "export": {"precision": "int8"}}))
    assert info["task"] == "text-classification" and info["labels"] == SEQ_LABELS
    assert info["parity"]["passed"] and info["parity"]["texts"] >= 5, info["parity"]
    assert (tmp_path / "onnx" / "maap_classifier.json").is_file()
    assert json.loads((tmp_path / "export.json").read_text())["parity"] == info["parity"]
