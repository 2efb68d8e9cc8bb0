"""Prometheus metrics of the model server, in a registry of its own (one per app)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from maap_trainer.serve.generation import Generation

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
RATE_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "maap_requests", "HTTP requests answered.", ["endpoint", "status"], registry=r
        )
        self.errors = Counter(
            "maap_request_errors",
            "Requests answered with an error status, and streams that failed after the 200.",
            ["endpoint", "status"],
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "maap_time_to_first_token_seconds",
            "From accepting a generation to its first token (queueing and prefill).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.generation_seconds = Histogram(
            "maap_generation_duration_seconds",
            "From accepting a generation to its last token.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decode_rate = Histogram(
            "maap_decode_tokens_per_second",
            "Per generation: tokens after the first over the time they took.",
            buckets=RATE_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "maap_prompt_tokens", "Prompt tokens of finished generations.", registry=r
        )
        self.generated_tokens = Counter(
            "maap_generated_tokens",
            "Generated tokens; rate() of this is the server's throughput in tokens/s.",
            registry=r,
        )
        self.queue_depth = Gauge(
            "maap_queue_depth", "Generations waiting for their first token.", registry=r
        )
        self.in_flight = Gauge(
            "maap_generations_in_flight", "Generations accepted and not finished.", registry=r
        )
        self.ready = Gauge("maap_model_ready", "1 once the model is loaded.", registry=r)
        self.adapters = Gauge(
            "maap_adapters_loaded", "LoRA adapters served beside the base model.", registry=r
        )

    def watch(self, queue_depth: Callable[[], float], in_flight: Callable[[], float]) -> None:
        """Gauges read at scrape time from the scheduler."""
        self.queue_depth.set_function(queue_depth)
        self.in_flight.set_function(in_flight)

    def observe(self, generation: Generation) -> None:
        if generation.finished_at is None:
            return
        self.prompt_tokens.inc(generation.prompt_tokens)
        self.generated_tokens.inc(generation.completion_tokens)
        self.generation_seconds.observe(generation.finished_at - generation.submitted_at)
        if (ttft := generation.time_to_first_token) is not None:
            self.time_to_first_token.observe(ttft)
        if (rate := generation.decode_tokens_per_second) is not None:
            self.decode_rate.observe(rate)
