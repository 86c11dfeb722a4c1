"""Where code runs: the one place that turns a `--device` setting into a torch device."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """'auto' -> this process's GPU (`cuda:<local_rank>`) when there is one, else the CPU;
    anything else is passed to torch.device ('cpu', 'cuda', 'cuda:1')."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
