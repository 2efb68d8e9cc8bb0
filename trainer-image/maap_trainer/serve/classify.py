"""/v1/classify: text classification and token classification (NER) over an ONNX encoder.

Served from an export with `maap_classifier.json` (export/classifier.py). One request
carries one text or a list of texts; the texts run as one padded batch through
onnxruntime. Token classification splits each text on whitespace into words (as the
trainer's `tokens` were), labels each word by its first sub-token and joins IOB2 tags into
entities with character offsets.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from maap_trainer.iob2 import entity_spans
from maap_trainer.serve.common import install_common
from maap_trainer.serve.metrics import ServerMetrics
from maap_trainer.serve.protocol import APIError
from maap_trainer.serve.server import ServerSettings

log = logging.getLogger("maap.serve")

CLASSIFIER_FILE = "maap_classifier.json"
MAX_INPUTS = 64
_WORD = re.compile(r"\S+")


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    input: str | list[str] = Field(description="A text or a list of texts.")

    @field_validator("input")
    @classmethod
    def _texts(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("give at least one text")
        if len(texts) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} texts per request (got {len(texts)})")
        if any(not t.strip() for t in texts):
            raise ValueError("a text must not be empty")
        return value

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def _softmax(logits: Any) -> Any:
    import numpy as np

    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class ClassifierRuntime:
    def __init__(self, model_dir: Path) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        manifest = json.loads((model_dir / CLASSIFIER_FILE).read_text(encoding="utf-8"))
        self.task: str = manifest["task"]
        self.labels: list[str] = manifest["labels"]
        self.inputs: list[str] = manifest["inputs"]
        self.max_length = int(manifest["maxLength"])
        self.session = ort.InferenceSession(
            str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def _run(self, encoded: Any) -> Any:
        import numpy as np

        feeds = {n: np.asarray(encoded[n], dtype=np.int64) for n in self.inputs}
        return self.session.run(["logits"], feeds)[0]

    def _check_lengths(self, lengths: list[int]) -> None:
        for i, n in enumerate(lengths):
            if n > self.max_length:
                raise APIError(
                    400,
                    f"input.{i}: {n} tokens, above this model's {self.max_length}",
                    param=f"input.{i}",
                    code="context_length_exceeded",
                )

    def classify(self, texts: list[str]) -> tuple[list[dict[str, Any]], int]:
        """Results per text, and the number of tokens they took."""
        if self.task == "token-classification":
            return self._tag(texts)
        lengths = [len(ids) for ids in self.tokenizer(texts)["input_ids"]]
        self._check_lengths(lengths)
        encoded = self.tokenizer(texts, padding=True, return_tensors="np")
        probs = _softmax(self._run(encoded))
        results = []
        for i, row in enumerate(probs):
            order = row.argsort()[::-1]
            results.append(
                {
                    "index": i,
                    "label": self.labels[order[0]],
                    "score": round(float(row[order[0]]), 6),
                    "scores": [
                        {"label": self.labels[j], "score": round(float(row[j]), 6)} for j in order
                    ],
                }
            )
        return results, sum(lengths)

    def _tag(self, texts: list[str]) -> tuple[list[dict[str, Any]], int]:
        spans = [[(m.group(), m.start(), m.end()) for m in _WORD.finditer(t)] for t in texts]
        words = [[w for w, _, _ in s] for s in spans]
        lengths = [len(ids) for ids in self.tokenizer(words, is_split_into_words=True)["input_ids"]]
        self._check_lengths(lengths)
        encoded = self.tokenizer(words, is_split_into_words=True, padding=True, return_tensors="np")
        probs = _softmax(self._run(encoded))
        results = []
        for i, text in enumerate(texts):
            tagged: list[dict[str, Any]] = []
            seen: set[int] = set()
            for position, word in enumerate(encoded.word_ids(batch_index=i)):
                if word is None or word in seen:
                    continue  # special tokens, and sub-tokens after a word's first
                seen.add(word)
                best = int(probs[i, position].argmax())
                token, start, end = spans[i][word]
                tagged.append({"word": token, "start": start, "end": end,
                               "label": self.labels[best],
                               "score": round(float(probs[i, position, best]), 6)})  # fmt: skip
            results.append({"index": i, "tokens": tagged, "entities": entities(text, tagged)})
        return results, sum(lengths)


def entities(text: str, tagged: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The words' IOB2 tags joined into entities with character offsets and mean score."""
    found = []
    for first, stop, kind in entity_spans([str(word["label"]) for word in tagged]):
        words = tagged[first:stop]
        start, end = words[0]["start"], words[-1]["end"]
        score = round(sum(w["score"] for w in words) / len(words), 6)
        found.append({"entity": kind, "text": text[start:end], "start": start, "end": end,
                      "score": score})  # fmt: skip
    return found


class ClassifierState:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.metrics = ServerMetrics()
        self.runtime: ClassifierRuntime | None = None
        self.load_error: str | None = None
        self.draining = False
        self.in_flight = 0
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(settings.max_batch_size)

    def load(self) -> None:
        try:
            self.runtime = ClassifierRuntime(self.settings.model_dir)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("the classifier failed to load")
            return
        self.metrics.watch(lambda: 0, lambda: self.in_flight)
        self.metrics.ready.set(1)

    def readiness(self) -> tuple[str, str | None]:
        if self.draining:
            return "draining", None
        if self.load_error is not None:
            return "failed", self.load_error
        return ("ready", None) if self.runtime is not None else ("loading", None)

    def start_draining(self) -> None:
        self.draining = True
        self.metrics.ready.set(0)

    def classify(self, texts: list[str]) -> tuple[list[dict[str, Any]], int]:
        status, error = self.readiness()
        if status != "ready" or self.runtime is None:
            code = "server_shutting_down" if status == "draining" else "model_loading"
            raise APIError(503, error or f"the model is {status}", code=code)
        with self._lock:
            if self.in_flight >= self.settings.max_batch_size + self.settings.max_queue:
                raise APIError(429, "the server is at capacity; retry shortly",
                               code="queue_full", kind="rate_limit_error")  # fmt: skip
            self.in_flight += 1
        try:
            with self._slots:  # at most max_batch_size batches run at once
                return self.runtime.classify(texts)
        finally:
            with self._lock:
                self.in_flight -= 1


def create_classifier_app(settings: ServerSettings) -> FastAPI:
    state = ClassifierState(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=state.load, name="model-loader", daemon=True).start()
        yield
        state.start_draining()

    app = FastAPI(title="maap classifier", lifespan=lifespan)
    app.state.server = state
    api = install_common(app, state.metrics, state.readiness, settings.auth_token)

    @api.get("/models")
    async def models() -> dict[str, Any]:
        entry = {"id": settings.model_name, "object": "model", "created": 0, "owned_by": "maap"}
        if state.runtime is not None:
            entry.update(task=state.runtime.task, labels=state.runtime.labels)
        return {"object": "list", "data": [entry]}

    @api.post("/classify")
    async def classify(body: ClassifyRequest) -> dict[str, Any]:
        if body.model is not None and body.model != settings.model_name:
            message = (
                f"model {body.model!r} does not exist; this server serves {settings.model_name!r}"
            )
            raise APIError(404, message, param="model", code="model_not_found")
        started = time.monotonic()
        results, tokens = await run_in_threadpool(state.classify, body.texts)
        state.metrics.prompt_tokens.inc(tokens)
        state.metrics.generation_seconds.observe(time.monotonic() - started)
        return {
            "object": "list",
            "model": settings.model_name,
            "task": state.runtime.task if state.runtime else None,
            "data": results,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    app.include_router(api)
    return app
