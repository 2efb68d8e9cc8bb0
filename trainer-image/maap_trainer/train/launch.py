"""The train stage's front door: train in this process, or start one process per rank.

`python -m maap_trainer train --config C` trains in-process when one process without
DeepSpeed is enough. Otherwise it checks the data (so a bad row fails in seconds, once),
then runs torch.distributed.run with the same stage, which starts NPROC_PER_NODE workers
on this node; every node of a multi-node run does the same with its NODE_RANK.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from maap_api.errors import TrainingPreempted, UserError
from maap_api.stage_config import TrainerConfig

from maap_trainer.fetch import local_dataset_paths
from maap_trainer.train import distributed
from maap_trainer.train.checkpoints import CHECKPOINTS_DIR, checkpoint_step, newest_complete
from maap_trainer.train.data import load_dataset


class WorkersFailed(RuntimeError):
    pass


def run_train_stage(cfg: TrainerConfig, config_path: Path) -> dict[str, Any]:
    from maap_trainer.train.run import run_training

    if distributed.is_worker():
        return run_training(cfg)
    on_gpu = distributed.gpu_count() > 0
    topology = distributed.topology_from_env()
    env = distributed.set_runtime_env(dict(os.environ), topology, on_gpu)
    if topology.world_size == 1 and not cfg.deepspeed.enabled:
        os.environ.update(env)
        return run_training(cfg)
    train_path, eval_path = local_dataset_paths(cfg)
    load_dataset(
        train_path, cfg.dataset.format, cfg.dataset.eval_fraction, cfg.training.seed, eval_path
    )
    return _launch(topology, config_path, env, Path(cfg.output_dir))


def _launch(
    topology: distributed.Topology, config_path: Path, env: dict[str, str], output_dir: Path
) -> dict[str, Any]:
    import json

    command = distributed.launch_command(topology, ["train", "--config", str(config_path)])
    with tempfile.NamedTemporaryFile("r", prefix="maap-worker-error-", delete=False) as f:
        error_file = Path(f.name)
    env[distributed.WORKER_ERROR_ENV] = str(error_file)
    child = subprocess.Popen(command, env=env)
    # A pod is stopped with SIGTERM: pass it on, so the workers save a checkpoint and stop
    # (and the next pod resumes from it) instead of being orphaned.
    stopped: list[int] = []

    def forward(signum: int, frame: object) -> None:
        stopped.append(signum)
        child.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        returncode = child.wait()
    except KeyboardInterrupt:
        child.send_signal(signal.SIGINT)
        child.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        reason = error_file.read_text(encoding="utf-8").strip() if error_file.exists() else ""
        error_file.unlink(missing_ok=True)
    if stopped:
        newest = newest_complete(output_dir / CHECKPOINTS_DIR)
        saved = f"checkpoint-{checkpoint_step(newest)} saved" if newest else "no checkpoint yet"
        raise TrainingPreempted(f"preempted (SIGTERM): {saved}; the next pod resumes from it")
    if returncode != 0:
        if reason:
            raise UserError(reason)
        raise WorkersFailed(
            f"training workers failed (torch.distributed.run exit {returncode}); see the log"
        )
    if topology.node_rank != 0:
        return {"nodeRank": topology.node_rank}
    return json.loads((output_dir / "metrics.json").read_text(encoding="utf-8"))
