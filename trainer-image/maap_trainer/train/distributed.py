"""Process topology, the torchrun-style launcher, and per-rank setup.

The operator (an Indexed Job) and `maap run` describe the run with the torchrun
variables MASTER_ADDR, MASTER_PORT, NNODES, NODE_RANK and NPROC_PER_NODE. When the run
needs more than one process, or DeepSpeed, the train stage re-executes itself under
torch.distributed.run; each worker then sees RANK, LOCAL_RANK and WORLD_SIZE.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from maap_api.errors import ConfigError

from maap_trainer.model_prep import cache_root
from maap_trainer.ports import free_port

WORKER_ERROR_ENV = "MAAP_WORKER_ERROR_FILE"


@dataclass(frozen=True)
class Topology:
    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str
    master_port: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


def _env_int(env: dict[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"environment {name}: expected an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"environment {name}: must be >= {minimum}, got {value}")
    return value


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def topology_from_env(env: dict[str, str] | None = None) -> Topology:
    """Read the torchrun variables; one process per GPU by default, else one on CPU."""
    env = dict(os.environ if env is None else env)
    nnodes = _env_int(env, "NNODES", 1, 1)
    node_rank = _env_int(env, "NODE_RANK", 0, 0)
    if node_rank >= nnodes:
        raise ConfigError(f"environment NODE_RANK: {node_rank} is not below NNODES={nnodes}")
    nproc = _env_int(env, "NPROC_PER_NODE", 0, 1) or max(1, gpu_count())
    addr = env.get("MASTER_ADDR", "").strip() or "127.0.0.1"
    if nnodes > 1 and not env.get("MASTER_ADDR", "").strip():
        raise ConfigError("environment MASTER_ADDR: needed when NNODES > 1 (rank 0's address)")
    # A single-node run picks a free port, so concurrent local runs do not collide.
    default_port = 29500 if nnodes > 1 else 0
    port = _env_int(env, "MASTER_PORT", default_port, 0) or free_port()
    return Topology(nnodes, node_rank, nproc, addr, port)


def is_worker() -> bool:
    """True inside a process started by torch.distributed.run."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def set_runtime_env(env: dict[str, str], topology: Topology, on_gpu: bool) -> dict[str, str]:
    """Environment every rank shares: where JIT-built ops are cached, threads, accelerator."""
    out = dict(env)
    # DeepSpeed JIT-compiles its shared-memory comm op and cpu_adam; build them once and
    # reuse them across runs, outside the repo and the artifact directory.
    out.setdefault("TORCH_EXTENSIONS_DIR", str(cache_root() / "torch_extensions"))
    if not on_gpu:
        out.setdefault("DS_ACCELERATOR", "cpu")
        # N processes on one node's cores: split the cores instead of oversubscribing them.
        cores = os.cpu_count() or 1
        out.setdefault("OMP_NUM_THREADS", str(max(1, cores // topology.nproc_per_node)))
    return out


def launch_command(topology: Topology, stage_args: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={topology.nnodes}",
        f"--node_rank={topology.node_rank}",
        f"--nproc_per_node={topology.nproc_per_node}",
        f"--master_addr={topology.master_addr}",
        f"--master_port={topology.master_port}",
        "-m", "maap_trainer", *stage_args,
    ]  # fmt: skip


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def configure_worker_state(deepspeed: bool, on_gpu: bool) -> bool:
    """Create accelerate's process state ourselves where the Trainer would get it wrong.

    On CPU under torchrun, TrainingArguments(use_cpu=True) builds a state that is not
    flagged for DeepSpeed, and DeepSpeed then runs every rank as a world of one. Creating
    PartialState with the gloo backend while ACCELERATE_USE_DEEPSPEED is set initialises
    DeepSpeed's process group; the Trainer is told to reuse it (use_configured_state).
    Returns whether it did so.
    """
    if on_gpu or not deepspeed or not is_worker():
        return False
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    state = PartialState(backend="gloo")
    if state.num_processes != world_size():
        raise RuntimeError(
            f"rank {rank()}: accelerate sees {state.num_processes} processes, torchrun "
            f"started {world_size()}"
        )
    return True


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
