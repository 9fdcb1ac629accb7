"""Training on several processes and machines: who plans, who joins, and how the processes meet.

Three ways a multi-process run starts, one code path afterwards:

- ``medlens train DATA --devices N --strategy ddp`` on one machine: Lightning starts the other N - 1
  processes by running the same command again with ``LOCAL_RANK`` set; rank 0 has planned and
  created the run folder and named it in ``MEDLENS_RUN_DIR``, and the others join it.
- ``torchrun --nnodes M --nproc-per-node N ... medlens train DATA --num-nodes M --devices N``: every
  process starts at once. The process group is set up here, before anything else; rank 0 plans
  and creates the run folder, and sends its path to the others, which read the plan from it.
- ``srun medlens train DATA --num-nodes M --devices N`` under SLURM: the same, with SLURM's ranks.

Rank 0 alone writes to the run folder. With more than one machine the run folder must be on storage
every machine sees (a cluster's shared home or project folder): resuming loads the checkpoint on
every process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from medlens.errors import ConfigError
from medlens.runs import RunFolder

RUN_DIR_VARIABLE = "MEDLENS_RUN_DIR"
MEET_TIMEOUT = timedelta(minutes=30)  # rank 0 may audit and plan a large dataset before the others hear from it


@dataclass(frozen=True)
class Launch:
    """How this process was started.

    Attributes:
        devices, num_nodes: processes per node and nodes asked for (``medlens train --devices --num-nodes``).
        rank: this process's global rank (0 plans and writes the run folder).
        launcher: ``local`` (this command started alone; Lightning may start its siblings), ``lightning``
            (a sibling Lightning started), ``torchrun`` or ``slurm``.
    """

    devices: int = 1
    num_nodes: int = 1
    rank: int = 0
    launcher: str = "local"

    @property
    def processes(self) -> int:
        return self.devices * self.num_nodes

    @property
    def external(self) -> bool:
        """Started by torchrun or SLURM, which started every process."""
        return self.launcher in ("torchrun", "slurm")

    @classmethod
    def detect(cls, devices: int = 1, num_nodes: int = 1) -> Launch:
        """Read the launcher's environment and check it agrees with ``devices x num_nodes``.

        Raises:
            ConfigError: a count below 1, a launcher that started another number of processes, or several
                nodes without a launcher to start them.
        """
        if devices < 1 or num_nodes < 1:
            raise ConfigError(f"--devices {devices} --num-nodes {num_nodes}: both must be at least 1")
        env = os.environ
        if "TORCHELASTIC_RUN_ID" in env and "RANK" in env:
            launch = cls(devices, num_nodes, int(env["RANK"]), "torchrun")
            started = int(env.get("WORLD_SIZE", "1"))
        elif _slurm_task():
            launch = cls(devices, num_nodes, int(env["SLURM_PROCID"]), "slurm")
            started = int(env["SLURM_NTASKS"])
        elif int(env.get("LOCAL_RANK", "0")) > 0 and env.get(RUN_DIR_VARIABLE):
            rank = int(env.get("NODE_RANK", "0")) * devices + int(env["LOCAL_RANK"])
            return cls(devices, num_nodes, rank, "lightning")
        else:
            if num_nodes > 1:
                raise ConfigError(f"--num-nodes {num_nodes}: the processes on every node are started by a launcher; "
                                  f"run e.g. `torchrun --nnodes {num_nodes} --nproc-per-node {devices} --node-rank K "
                                  "--master-addr HOST --master-port PORT --no-python medlens train ...` on each node, "
                                  "or `srun medlens train ...` under SLURM")
            return cls(devices, num_nodes, 0, "local")
        if started != launch.processes:
            raise ConfigError(f"{launch.launcher} started {started} processes but --devices {devices} x --num-nodes "
                              f"{num_nodes} = {launch.processes}; give the same counts to both")
        return launch


def _slurm_task() -> bool:
    """Inside ``srun`` with several tasks (an interactive ``salloc`` shell is not a launcher)."""
    env = os.environ
    return "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1 and env.get("SLURM_JOB_NAME") not in (
        "bash", "interactive")


def meet(launch: Launch) -> None:
    """Under torchrun or SLURM, set up the process group now so rank 0 can share the run folder before
    training; Lightning then finds it set up and uses it."""
    import torch
    import torch.distributed as dist

    if not launch.external or dist.is_initialized():
        return
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    cluster = TorchElasticEnvironment() if launch.launcher == "torchrun" else SLURMEnvironment()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://{cluster.main_address}:{cluster.main_port}",
                            rank=cluster.global_rank(), world_size=cluster.world_size(), timeout=MEET_TIMEOUT)


def join_run(launch: Launch) -> RunFolder | None:
    """The run folder rank 0 created, for every other process; ``None`` on rank 0 (it plans)."""
    if launch.launcher == "lightning":
        return RunFolder(Path(os.environ[RUN_DIR_VARIABLE]))
    if not launch.external:
        return None
    meet(launch)
    if launch.rank == 0:
        return None
    return RunFolder(Path(_broadcast(None)))


def announce_run(launch: Launch, run: RunFolder) -> None:
    """Rank 0, after creating the run folder: tell the processes that join it where it is."""
    os.environ[RUN_DIR_VARIABLE] = str(run.root.resolve())  # inherited by the processes Lightning starts
    if launch.external:
        _broadcast(str(run.root.resolve()))


def _broadcast(value):
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
