"""The operator's Prometheus metrics (maap.metrics), read back as a scraper parses them."""

from __future__ import annotations

from maap import metrics
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families


def gauge(name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of one metric in the default registry's exposition, by their labels."""
    text = generate_latest().decode()
    [family] = [f for f in text_string_to_metric_families(text) if f.name == name]
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples}


def job_phases(namespace: str, name: str) -> dict[str, float]:
    return {
        dict(labels)["phase"]: value
        for labels, value in gauge("maap_finetunejob_phase").items()
        if dict(labels)["namespace"] == namespace and dict(labels)["name"] == name
    }


def by_phase() -> dict[str, float]:
    return {dict(labels)["phase"]: value for labels, value in gauge("maap_finetunejobs").items()}


def test_each_job_has_one_phase_at_1_and_the_counts_follow() -> None:
    before = by_phase()
    metrics.record_phase("metrics-a", "job", "Training")
    metrics.record_phase("metrics-b", "job", "Training")
    assert job_phases("metrics-a", "job") == {p: float(p == "Training") for p in metrics.PHASES}
    assert by_phase()["Training"] == before.get("Training", 0) + 2

    metrics.record_phase("metrics-a", "job", "Succeeded")
    assert job_phases("metrics-a", "job") == {p: float(p == "Succeeded") for p in metrics.PHASES}
    assert job_phases("metrics-b", "job")["Training"] == 1
    assert by_phase()["Training"] == before.get("Training", 0) + 1
    assert by_phase()["Succeeded"] == before.get("Succeeded", 0) + 1


def test_a_deleted_job_leaves_no_series() -> None:
    metrics.record_phase("metrics-c", "gone", "Failed")
    failed = by_phase()["Failed"]
    metrics.forget("metrics-c", "gone")
    metrics.forget("metrics-c", "gone")  # a second delete event is harmless
    assert job_phases("metrics-c", "gone") == {}
    assert by_phase()["Failed"] == failed - 1
