"""What `maap run` prints at the end, from the stages' summaries.

The rows come from the same typed summaries the stages report to the operator
(`status.metrics`, `status.export`), so `kubectl get ftj -o yaml` shows these figures.
"""

from __future__ import annotations

from maap_api.results import ExportSummary, ParityFigures, TrainedMetrics
from maap_api.units import human_size


def parity_line(parity: ParityFigures) -> str:
    """The export's parity gate in one line."""
    if parity.skipped:
        return f"skipped: {parity.skipped}"
    if parity.label_agreement is not None:  # a classifier
        return (
            f"{parity.label_agreement:.1%} of labels agree over {parity.texts} texts, "
            f"largest logit difference {parity.max_logit_difference or 0:.2g} vs PyTorch"
        )
    parts = [f"{parity.exact_matches}/{parity.prompts} greedy answers identical"]
    if parity.token_agreement is not None:
        parts.append(f"{parity.token_agreement:.1%} token agreement")
    if ppl := parity.perplexity:
        parts.append(
            f"perplexity {ppl.pytorch:.2f} -> {ppl.onnx:.2f} ({ppl.relative_increase:+.1%}) "
            "vs PyTorch"
        )
    return ", ".join(parts)


def _optional(value: float | int | None, spec: str, unit: str) -> str | None:
    return None if value is None else f"{value:{spec}}{unit}"


def summary_rows(
    method: str, metrics: TrainedMetrics | None, export: ExportSummary | None
) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if metrics is not None:
        before, after = metrics.eval_loss_before, metrics.eval_loss_after
        if before is not None and after is not None:
            rows.append(("eval loss", f"{before:.3f} -> {after:.3f} ({after - before:+.3f})"))
        for name, was, now in (
            ("eval accuracy", metrics.eval_accuracy_before, metrics.eval_accuracy_after),
            ("eval F1", metrics.eval_f1_before, metrics.eval_f1_after),
        ):
            if was is not None and now is not None:
                rows.append((name, f"{was:.3f} -> {now:.3f}"))
        parts = [
            method,
            _optional(metrics.steps, "", " steps"),
            f"{metrics.train_rows} train / {metrics.eval_rows} eval rows"
            if metrics.train_rows is not None
            else None,
            _optional(metrics.train_tokens, ",", " tokens"),
            _optional(metrics.tokens_per_second, ".0f", " tok/s"),
            _optional(metrics.trainable_parameters, ",", " trainable parameters"),
        ]
        rows.append(("training", ", ".join(p for p in parts if p)))
    if export is not None:
        rows.append(
            (
                "export",
                f"{export.precision} on {export.execution_provider}, "
                f"{human_size(export.size_bytes)}, {export.build_seconds:.0f} s build",
            )
        )
        if export.parity is not None:
            rows.append(("parity", parity_line(export.parity)))
        if adapter := export.adapter:
            line = f"{adapter.modules} LoRA modules, {human_size(adapter.size_bytes)}"
            if adapter.parity is not None:
                line += f"; {parity_line(adapter.parity)}"
            rows.append(("adapter", line))
    return rows
