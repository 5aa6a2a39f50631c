"""DDP from the launcher's environment, in a few lines.

Three launchers, one `kubevae train`:
- torchrun (locally, or inside a pod with several processes) and the Training Operator's
  PyTorchJob set WORLD_SIZE, RANK, LOCAL_RANK (torchrun only), MASTER_ADDR and MASTER_PORT.
- Kubeflow Trainer v2's torch runtime (a TrainJob) sets torchrun's own settings instead:
  PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT. With one
  process per node they are mapped here (node rank = rank); with more, the pod runs torchrun,
  which reads them and sets the first set for its children.
Without any of them this is a single process. gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from kubevae.hardware import pick_device


@dataclass
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


TORCHRUN_KEYS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TRAINER_KEYS = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")


def launcher_environment(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The torchrun-style variables (TORCHRUN_KEYS) this process should use: those already set
    (torchrun, PyTorchJob), or those mapped from a TrainJob's PET_* variables; {} alone."""
    if "WORLD_SIZE" in env or "PET_NNODES" not in env:
        return {k: env[k] for k in TORCHRUN_KEYS if k in env}
    missing = [k for k in TRAINER_KEYS if k not in env and k != "PET_NPROC_PER_NODE"]
    if missing:
        raise RuntimeError(f"PET_NNODES is set (a Kubeflow Trainer TrainJob) but {', '.join(missing)} "
                           f"is not")
    nnodes, procs = env["PET_NNODES"], env.get("PET_NPROC_PER_NODE", "1")
    if not nnodes.isdecimal():
        raise RuntimeError(f"PET_NNODES={nnodes!r}: expected a fixed number of nodes (no elastic range)")
    if procs != "1":
        raise RuntimeError(f"PET_NPROC_PER_NODE={procs}: several processes per node need torchrun "
                           f"(`torchrun --no-python kubevae train ...` reads the PET_* variables)")
    return {"WORLD_SIZE": nnodes, "RANK": env["PET_NODE_RANK"], "LOCAL_RANK": "0",
            "MASTER_ADDR": env["PET_MASTER_ADDR"], "MASTER_PORT": env["PET_MASTER_PORT"]}


def node_rank(env: Mapping[str, str] = os.environ) -> int:
    """The rank of this pod among the job's pods (0: the one that uploads results): the
    TrainJob's PET_NODE_RANK, torchrun's GROUP_RANK, or the PyTorchJob pod's RANK."""
    for key in ("PET_NODE_RANK", "GROUP_RANK", "RANK"):
        if env.get(key, "").isdecimal():
            return int(env[key])
    return 0


def setup(requested_device: str = "auto") -> Distributed:
    os.environ.update(launcher_environment())  # init_process_group reads MASTER_* from here
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if world_size > 1:
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={world_size} but {name} is not set; start with "
                                   f"torchrun or inside a PyTorchJob")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                rank=rank, world_size=world_size)
    return Distributed(rank, local_rank, world_size, device)
