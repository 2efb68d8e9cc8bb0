"""The stages' final reports reach status through the real API server, nothing pruned.

The operator's progress endpoint (maap.progress_api) runs in this process against the
real control plane; the trainer's own reporting (write_progress, the export stage's
_report) posts to it over HTTP. The CRD's status schema must hold every figure: the API
server silently drops fields its schema does not name.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from maap.local.summary import summary_rows
from maap.progress_api import start_progress_server
from maap_api.finetunejob import GROUP, PLURAL, VERSION, FineTuneJobStatus
from maap_api.results import ExportResult
from maap_trainer import progress
from maap_trainer.export import _report
from maap_trainer.progress import PROGRESS_TOKEN_ENV, PROGRESS_URL_ENV, ProgressReport

from tests.conftest import free_port
from tests.test_results import config, export_info, outputs, parity, train_metrics

TOKEN = "progress-t0k3n"


@pytest.fixture
def progress_endpoint(api_client: client.ApiClient) -> Iterator[str]:
    """maap's progress API on a free port, served from its own event loop."""
    loop = asyncio.new_event_loop()
    port = free_port()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(start_progress_server(api_client, port))
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(30), "the progress server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


def create_job(api: client.ApiClient, namespace: str, name: str) -> None:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"preset": "smollm2-135m-instruct"},
            "dataset": {"path": "data/train.jsonl"},
            # No operator runs here: nothing acts on the job but the progress reports.
            "suspend": True,
        },
    }
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    client.CoreV1Api(api).create_namespaced_secret(
        namespace,
        {"metadata": {"name": f"{name}-progress"}, "stringData": {"token": TOKEN}},
    )


def test_final_reports_fill_status_metrics_export_and_artifacts(
    api_client: client.ApiClient,
    namespace: str,
    progress_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    create_job(api_client, namespace, "pirate")
    monkeypatch.setenv(PROGRESS_URL_ENV, f"{progress_endpoint}/v1/progress/{namespace}/pirate")
    monkeypatch.setenv(PROGRESS_TOKEN_ENV, TOKEN)
    out = outputs(tmp_path / "output")
    metrics = train_metrics()

    # The train stage's final report, then the export stage's, as the pods send them.
    progress.write_progress(
        out, ProgressReport(stage="trained", step=36, total_steps=36, metrics=metrics.summary())
    )
    assert progress.close_progress(timeout=30)
    written = _report(config(out), export_info(out, parity(0.9, 10.5)))
    assert progress.close_progress(timeout=30)

    job = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "pirate"
    )
    stored = job["status"]
    assert stored["progress"]["stage"] == "exported"
    status = FineTuneJobStatus.model_validate(stored)
    # Every figure survived the API server's pruning to the CRD's schema.
    assert status.metrics == metrics.summary()
    assert stored["metrics"]["trainTokens"] == 41_000
    assert stored["export"]["parity"]["perplexity"]["relativeIncrease"] == pytest.approx(0.05)
    assert stored["export"]["seconds"] == written["seconds"]
    assert stored["artifacts"]["onnxModel"] == str(out / "onnx")
    assert stored["artifacts"]["onnxSizeBytes"] == written["sizeBytes"]
    assert stored["artifacts"]["mergedModel"] == str(out / "merged")
    # `kubectl get ftj -o yaml` holds what `maap run` prints.
    assert status.export == ExportResult.model_validate(written).summary()
    assert summary_rows("lora", status.metrics, status.export) == summary_rows(
        "lora", metrics.summary(), ExportResult.model_validate(written).summary()
    )
    assert dict(summary_rows("lora", status.metrics, status.export))["eval loss"] == (
        "2.310 -> 0.870 (-1.440)"
    )
