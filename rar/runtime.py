"""Where code runs: the one place that turns a `--device` setting into a torch device, and
the distributed environment a process finds itself in (torchrun's or SLURM's variables)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """'auto' -> this process's GPU (`cuda:<local_rank>`) when there is one, else the CPU;
    anything else is passed to torch.device ('cpu', 'cuda', 'cuda:1')."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environ(cls) -> DistEnv:
        """Rank and world size from torchrun's variables or SLURM's (srun / submitit)."""
        env = os.environ
        if "RANK" in env and "WORLD_SIZE" in env:
            return cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
        if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
            return cls(
                int(env["SLURM_PROCID"]),
                int(env["SLURM_NTASKS"]),
                int(env.get("SLURM_LOCALID", 0)),
            )
        return cls()
