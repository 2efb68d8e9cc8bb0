"""The training history: merge and bound (maap_api.history), the file a torn write leaves,
the history ConfigMap's size, and what the train stage's callbacks record in a real
(tiny, randomly initialised) Trainer run and in a real SmolLM2 run (slow).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from maap_api.history import (
    HISTORY_CONFIGMAP_KEY,
    HISTORY_FILE,
    MAX_CHECKPOINTS,
    MAX_POINTS,
    REPORT_TAIL,
    CheckpointPoint,
    JobHistory,
    LogPoint,
    append_history,
    history_configmap_data,
    parse_history_configmap,
    read_history,
)
from maap_trainer import progress
from maap_trainer.progress import (
    PROGRESS_TOKEN_ENV,
    PROGRESS_URL_ENV,
    ProgressReport,
    attach_history,
    read_progress,
    write_progress,
)

from tests.trainer_helpers import (
    metrics_of,
    run_stage,
    short_chat_rows,
    trainer_config,
    write_jsonl,
)

CONFIGMAP_LIMIT = 1024 * 1024  # what etcd and the API server take for one object


def train_point(step: int, loss: float = 1.0) -> LogPoint:
    return LogPoint(step=step, time=1_764_000_000.0 + step, train_loss=loss, learning_rate=1e-4)


def valid_point(step: int, loss: float = 2.0) -> LogPoint:
    return LogPoint(step=step, time=1_764_000_000.5 + step, valid_loss=loss)


# -- merge and bound --------------------------------------------------------------------------


def test_a_steps_train_and_valid_loss_end_in_one_point_in_step_order() -> None:
    history = JobHistory().merged([train_point(2, 1.5), valid_point(0, 3.0)], [])
    history = history.merged([valid_point(2, 1.9), train_point(1, 2.5)], [])
    assert [p.step for p in history.points] == [0, 1, 2]
    step2 = history.points[2]
    assert (step2.train_loss, step2.valid_loss, step2.learning_rate) == (1.5, 1.9, 1e-4)
    # A later value for the same field wins (a resumed run logs the step again).
    again = history.merged([train_point(2, 1.4)], [])
    assert again.points[2].train_loss == 1.4 and again.points[2].valid_loss == 1.9
    # The same entries again change nothing (the receiver then writes nothing).
    assert history.merged([train_point(2, 1.5)], []) == history


def test_the_history_stays_bounded_and_keeps_its_shape() -> None:
    points = [train_point(s, 10.0 / (s + 1)) for s in range(1, 5001)]
    evals = [valid_point(s) for s in range(0, 5001, 500)]
    checkpoints = [CheckpointPoint(step=s, time=0.0, path=f"checkpoints/checkpoint-{s}")
                   for s in range(100, 5001, 25)]  # fmt: skip
    history = JobHistory()
    for start in range(0, len(points), REPORT_TAIL):  # as the reports bring them
        history = history.merged(points[start : start + REPORT_TAIL], [])
    history = history.merged(evals, checkpoints)
    steps = [p.step for p in history.points]
    assert len(steps) <= MAX_POINTS and steps == sorted(steps)
    assert steps[0] == 0, "the eval before training always stays"
    assert steps[-REPORT_TAIL:] == list(range(5001 - REPORT_TAIL, 5001)), "the newest stay dense"
    assert {p.step for p in history.points if p.valid_loss is not None} == set(range(0, 5001, 500))
    assert len(history.checkpoints) == MAX_CHECKPOINTS
    assert history.checkpoints[-1].step == 5000
    # Tiny limits end too (no endless halving).
    assert len(JobHistory().merged([train_point(s) for s in range(3)], []).tail(2).points) == 2


def test_a_resumed_run_keeps_what_was_logged_up_to_its_checkpoint() -> None:
    history = JobHistory().merged(
        [valid_point(0), *[train_point(s) for s in range(1, 9)]],
        [CheckpointPoint(step=4, time=0.0, path="checkpoints/checkpoint-4")],
    )
    kept = history.up_to(5)
    assert [p.step for p in kept.points] == [0, 1, 2, 3, 4, 5]
    assert [c.step for c in kept.checkpoints] == [4]
    assert [p.step for p in history.tail(3).points] == [6, 7, 8]


# -- the file ---------------------------------------------------------------------------------


def test_a_torn_line_is_skipped_and_swallows_nothing_appended_after_it(tmp_path: Path) -> None:
    append_history(tmp_path, point=valid_point(0))
    append_history(tmp_path, point=train_point(1))
    path = tmp_path / HISTORY_FILE
    with path.open("a", encoding="utf-8") as out:
        out.write('{"point": {"step": 2, "time": 17640')  # killed mid-write
    assert [p.step for p in read_history(tmp_path).points] == [0, 1]
    # The resumed run appends: its first line must not be glued to the torn one.
    append_history(
        tmp_path,
        point=train_point(2),
        checkpoint=CheckpointPoint(step=2, time=0.0, path="checkpoints/checkpoint-2"),
    )
    history = read_history(tmp_path)
    assert [p.step for p in history.points] == [0, 1, 2]
    assert [c.path for c in history.checkpoints] == ["checkpoints/checkpoint-2"]
    path.write_text("not json\n[1, 2]\n" + path.read_text(encoding="utf-8"), encoding="utf-8")
    assert [p.step for p in read_history(tmp_path).points] == [0, 1, 2]
    assert read_history(tmp_path / "nowhere") == JobHistory()


# -- the ConfigMap ----------------------------------------------------------------------------


def full_history() -> JobHistory:
    """MAX_POINTS points and MAX_CHECKPOINTS checkpoints, every field set, floats at full
    precision (what a real run's values serialise to)."""
    points = [
        LogPoint(step=100_000 + s, time=1_764_000_000.123456 + s, train_loss=1 / 3 + s,
                 valid_loss=2 / 3 + s, learning_rate=1.9999999999999998e-4,
                 epoch=12.345678901234567, tokens_per_second=123456.7)
        for s in range(MAX_POINTS)
    ]  # fmt: skip
    checkpoints = [
        CheckpointPoint(step=100_000 + s, time=1_764_000_000.123456 + s,
                        path=f"checkpoints/checkpoint-{100_000 + s}", train_loss=1 / 3,
                        valid_loss=2 / 3)
        for s in range(MAX_CHECKPOINTS)
    ]  # fmt: skip
    return JobHistory(points=points, checkpoints=checkpoints)


def test_a_full_history_configmap_is_far_under_a_mebibyte() -> None:
    history = full_history()
    data = history_configmap_data(history)
    size = len(json.dumps({"data": data}).encode())
    assert size < CONFIGMAP_LIMIT / 8, f"{size} bytes"
    assert parse_history_configmap(data) == history
    # A merge never grows it past the bound.
    grown = history.merged([train_point(200_000 + s) for s in range(100)], [])
    assert len(grown.points) <= MAX_POINTS and len(grown.checkpoints) <= MAX_CHECKPOINTS
    assert parse_history_configmap({HISTORY_CONFIGMAP_KEY: "{torn"}) == JobHistory()
    assert parse_history_configmap(None) == JobHistory()


def test_a_report_with_a_full_tail_fits_the_progress_endpoint() -> None:
    tail = full_history().tail(REPORT_TAIL)
    report = ProgressReport(stage="training", history=tail.points, checkpoints=tail.checkpoints)
    body = json.dumps(report.to_json_dict()).encode()
    assert len(body) < 64 * 1024 / 4, f"{len(body)} bytes"  # the receiver takes 64 KiB
    assert ProgressReport.model_validate_json(body) == report


def test_reports_to_a_directory_carry_its_newest_history(tmp_path: Path) -> None:
    history = JobHistory().merged([train_point(s) for s in range(1, 41)], [])
    attach_history(tmp_path, lambda: history.tail(REPORT_TAIL))
    try:
        write_progress(tmp_path, ProgressReport(stage="training", step=40))
        written = read_progress(tmp_path)
        assert [p.step for p in written.history] == list(range(21, 41))
        write_progress(tmp_path / "other", ProgressReport(stage="exporting"))
        assert read_progress(tmp_path / "other").history == []
    finally:
        attach_history(tmp_path, None)
    write_progress(tmp_path, ProgressReport(stage="exported"))
    assert read_progress(tmp_path).history == []


# -- the callbacks in a real Trainer run ------------------------------------------------------


@dataclass
class ProgressServer:
    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def progress_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ProgressServer]:
    """Takes 0.3 s per report, so the reporter coalesces most of a fast run's reports."""
    state = ProgressServer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(0.3)
            state.received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_port}/v1/progress/team-a/demo"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(PROGRESS_URL_ENV, state.url)
    monkeypatch.setenv(PROGRESS_TOKEN_ENV, "t0k3n")
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def tiny_trainer(output: Path, max_steps: int, **extra: Any) -> Any:
    """A real Trainer on a 1-layer, 16-wide Llama (random weights, random token rows),
    with the train stage's callbacks in run.py's order: a run takes well under a second."""
    import torch
    from maap_trainer.train.callbacks import history_callback, progress_callback
    from maap_trainer.train.checkpoints import CHECKPOINTS_DIR, marker_callback
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    )  # fmt: skip
    rows = [
        {"input_ids": ids, "attention_mask": [1] * 8, "labels": ids}
        for ids in torch.randint(0, 64, (32, 8)).tolist()
    ]
    args = TrainingArguments(
        output_dir=str(output / CHECKPOINTS_DIR), per_device_train_batch_size=4,
        max_steps=max_steps, logging_steps=1, save_strategy="steps", save_steps=2,
        eval_strategy="steps", eval_steps=3, report_to="none", use_cpu=True, disable_tqdm=True,
        include_num_input_tokens_seen="non_padding", learning_rate=1e-2, seed=0, **extra,
    )  # fmt: skip
    callbacks = [progress_callback(output), marker_callback(), history_callback(output)]
    return Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows[:4],
                   callbacks=callbacks)  # fmt: skip


def test_a_trainer_run_records_each_logged_step_eval_and_complete_checkpoint(
    tmp_path: Path, progress_server: ProgressServer
) -> None:
    output = tmp_path / "output"
    trainer = tiny_trainer(output, max_steps=6, eval_on_start=True)
    try:
        trainer.train()
        # run.py's next report (the eval after training) carries the tail too.
        write_progress(output, ProgressReport(stage="evaluating", step=6, total_steps=6))
        assert progress.close_progress(timeout=30)
    finally:
        attach_history(output, None)

    history = read_history(output)
    assert [p.step for p in history.points] == [0, 1, 2, 3, 4, 5, 6]
    before = history.points[0]
    assert before.valid_loss is not None and before.train_loss is None, "the eval on start"
    assert all(p.train_loss is not None for p in history.points[1:])
    assert [p.step for p in history.points if p.valid_loss is not None] == [0, 3, 6]
    logged = history.points[1:]
    assert all(p.learning_rate is not None and p.epoch is not None for p in logged)
    assert all(p.tokens_per_second and p.tokens_per_second > 0 for p in logged)
    assert [(c.step, c.path) for c in history.checkpoints] == [
        (2, "checkpoints/checkpoint-2"), (4, "checkpoints/checkpoint-4"),
        (6, "checkpoints/checkpoint-6"),
    ]  # fmt: skip
    by_step = {p.step: p for p in history.points}
    four = history.checkpoints[1]
    assert four.train_loss == by_step[4].train_loss
    assert four.valid_loss == by_step[3].valid_loss, "the newest eval at that step"
    # One line per entry: 7 evaluated or logged steps (3 with both) and 3 checkpoints.
    lines = (output / HISTORY_FILE).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6 + 3 + 3

    # The reporter sent only some reports (it coalesces), and they still hold every point.
    received = progress_server.received
    assert len(received) < 8, [r["step"] for r in received]
    sent = JobHistory()
    for report in received:
        sent = sent.merged(
            [LogPoint.model_validate(p) for p in report.get("history", [])],
            [CheckpointPoint.model_validate(c) for c in report.get("checkpoints", [])],
        )
    assert sent == history


def test_a_resumed_trainer_run_keeps_the_history_before_its_checkpoint(tmp_path: Path) -> None:
    output = tmp_path / "output"
    try:
        tiny_trainer(output, max_steps=5, eval_on_start=True).train()
        # The Trainer saves at its last step too.
        assert [c.step for c in read_history(output).checkpoints] == [2, 4, 5]
        first = {p.step: p for p in read_history(output).points}
        # As if checkpoint-5 had been torn by a kill: the next run resumes from checkpoint-4.
        resumed = tiny_trainer(output, max_steps=8)
        resumed.train(resume_from_checkpoint=str(output / "checkpoints" / "checkpoint-4"))
    finally:
        attach_history(output, None)
    history = read_history(output)
    assert [p.step for p in history.points] == list(range(0, 9))
    again = {p.step: p for p in history.points}
    assert again[0] == first[0] and again[4] == first[4], "before the checkpoint: kept as is"
    assert again[5].time > first[5].time, "after it: logged again by the resumed run"
    assert [c.step for c in history.checkpoints] == [2, 4, 6, 8]


def test_a_fresh_run_starts_a_fresh_history(tmp_path: Path) -> None:
    output = tmp_path / "output"
    append_history(output, point=train_point(99))
    try:
        tiny_trainer(output, max_steps=2).train()
    finally:
        attach_history(output, None)
    assert [p.step for p in read_history(output).points] == [1, 2]


def test_a_checkpoint_without_its_marker_is_not_recorded(tmp_path: Path) -> None:
    from maap_trainer.train.callbacks import history_callback
    from transformers import TrainerControl, TrainerState, TrainingArguments

    output = tmp_path / "output"
    (output / "checkpoints" / "checkpoint-2").mkdir(parents=True)  # torn: no marker
    callback = history_callback(output)
    state = TrainerState(global_step=2, is_world_process_zero=True)
    args = TrainingArguments(output_dir=str(output / "checkpoints"), report_to="none")
    try:
        callback.on_train_begin(args, state, TrainerControl())
        callback.on_save(args, state, TrainerControl())
    finally:
        attach_history(output, None)
    assert read_history(output).checkpoints == []


# -- a real train stage (slow) ----------------------------------------------------------------


@pytest.mark.slow
def test_the_train_stage_writes_one_point_per_logged_step_and_its_checkpoints(
    tmp_path: Path,
) -> None:
    data = write_jsonl(tmp_path / "short.jsonl", short_chat_rows(20))
    config, output = trainer_config(
        tmp_path, data, "history",
        training={"maxSteps": 4, "checkpointSteps": 2, "batchSize": 2, "loggingSteps": 1},
    )  # fmt: skip
    done = run_stage(config)
    assert done.returncode == 0, done.stderr[-3000:]
    history = read_history(output)
    metrics = metrics_of(output)
    assert [p.step for p in history.points] == [0, 1, 2, 3, 4]
    assert [p.step for p in history.points if p.train_loss is not None] == [1, 2, 3, 4]
    assert history.points[0].valid_loss == pytest.approx(metrics["evalLossBefore"])
    assert history.points[-1].valid_loss == pytest.approx(metrics["evalLossAfter"])
    assert [(c.step, c.path) for c in history.checkpoints] == [
        (2, "checkpoints/checkpoint-2"), (4, "checkpoints/checkpoint-4"),
    ]  # fmt: skip
    assert history.checkpoints[0].train_loss == history.points[2].train_loss
    assert history.checkpoints[0].valid_loss == history.points[0].valid_loss
    final = read_progress(output)
    assert final is not None and final.stage == "trained"
    assert JobHistory(points=final.history, checkpoints=final.checkpoints) == history
