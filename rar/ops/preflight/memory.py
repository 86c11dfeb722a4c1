"""The sampling memory check of `rar preflight`: does every planned sample set's chunk fit the
GPU? `rar sample` draws a chunk as one batch, so a chunk holds the weights, a KV cache an
image and a decoding slice (`rar.settings.presets.chunk_memory_bytes`); at ImageNet-512's
1,024 tokens a study-wide chunk of 250 does not fit an 80 GB GPU (docs/gpu.md). The
arithmetic takes the device's memory as an argument, so that it is tested without a GPU;
`check_sampling_memory` takes it from the GPU the preflight's sample job ran on (the submit
host that runs `rar preflight` has none), else from a GPU of its own, and skips without
either.
"""

from __future__ import annotations

from dataclasses import dataclass

from rar.experiments.build import chunk_size_of
from rar.ops.preflight.checks import Check
from rar.settings.presets import (
    DECODE_BYTES,
    SAMPLING_MEMORY_MARGIN,
    chunk_memory_bytes,
    kv_cache_bytes,
    largest_chunk,
)
from rar.settings.stages import SampleSettings

# Bytes a KV-cache value and a weight take in each `rar sample --dtype` (auto is bf16 on a
# GPU): bf16 keeps the fp32 weights beside the decode engine's bf16 copy.
VALUE_BYTES = {"fp32": 4, "bf16": 2, "auto": 2}
WEIGHT_BYTES = {"fp32": 4, "bf16": 4 + 2, "auto": 4 + 2}
GIB = 2**30


@dataclass(frozen=True)
class ChunkPlan:
    """The sampling of one table row: what decides its chunk's memory."""

    table: str
    row: str
    model: str
    num_tokens: int
    chunk_size: int
    params: int  # the generator's parameters

    def weight_bytes(self, dtype: str) -> int:
        """What the generator's weights hold when sampling in `dtype` (`WEIGHT_BYTES`)."""
        return self.params * WEIGHT_BYTES[dtype]


def chunk_plans(study) -> list[ChunkPlan]:
    """One ChunkPlan per table row (and CEILING row) that samples a run of the study; its
    curve evaluations and sweeps share its model, tokens and chunk size. Released checkpoints
    (`official:`) have no run config here and are not planned."""
    plans = {}
    for table, rows in study.tables.items():
        for row in [*rows, *study.references.get(table, [])]:
            ev = study.evaluations[row.evaluation]
            if ev.run not in study.runs or ev.kind not in ("model", "untrained"):
                continue
            cfg = study.runs[ev.run].config
            chunk = chunk_size_of(study.config, ev.metrics)
            plan = ChunkPlan(
                table, row.label, cfg.model, cfg.num_tokens, chunk, cfg.shape.parameters
            )
            plans.setdefault((table, row.label), plan)
    return list(plans.values())


def memory_checks(
    plans: list[ChunkPlan],
    device_bytes: int,
    device_name: str,
    *,
    dtype: str,
    config_file: str,
) -> list[Check]:
    """A FAIL per row whose chunk does not fit `device_bytes` less the margin, naming the
    table, row, chunk size, the memory needed and the largest chunk that fits; else one PASS."""
    value_bytes = VALUE_BYTES[dtype]
    usable = device_bytes * (1 - SAMPLING_MEMORY_MARGIN)
    room = (
        f"{usable / GIB:.1f} GiB usable ({1 - SAMPLING_MEMORY_MARGIN:.0%} of "
        f"{device_bytes / GIB:.1f} GiB, {device_name})"
    )
    checks, worst = [], None
    for p in plans:
        weights = p.weight_bytes(dtype)
        need = chunk_memory_bytes(
            p.model, p.num_tokens, p.chunk_size, weight_bytes=weights, value_bytes=value_bytes
        )
        if worst is None or need > worst[0]:
            worst = (need, p)
        if need <= usable:
            continue
        fits = largest_chunk(
            p.model,
            p.num_tokens,
            device_bytes,
            weight_bytes=weights,
            value_bytes=value_bytes,
        )
        cache = p.chunk_size * kv_cache_bytes(p.model, p.num_tokens, value_bytes=value_bytes)
        checks.append(
            Check(
                f"sampling memory: {p.table} / {p.row}",
                False,
                f"chunk_size {p.chunk_size} of {p.model} at {p.num_tokens:,} tokens, {dtype}: "
                f"needs {need / GIB:.1f} GiB (KV cache {cache / GIB:.1f} GiB + weights "
                f"{weights / GIB:.1f} GiB + decoding {DECODE_BYTES / GIB:.1f} GiB) of "
                f"{room}; the largest chunk that fits is {fits}",
                f"{config_file}: set `sampling: {{chunk_size: {fits}}}` (or less) in "
                f"tables.{p.table}'s base or this row, before its sample sets start (the chunk "
                "size decides which images are drawn)",
            )
        )
    if not checks and worst is not None:
        need, p = worst
        checks.append(
            Check(
                "sampling memory",
                True,
                f"every planned chunk fits {room}; the largest needs {need / GIB:.1f} GiB "
                f"({p.table} / {p.row}: chunk_size {p.chunk_size} of {p.model} at "
                f"{p.num_tokens:,} tokens, {dtype})",
            )
        )
    return checks


def check_sampling_memory(
    study, *, device: str, config_file: str, gpu: tuple[int, str] | None = None
) -> list[Check]:
    """`memory_checks` of the study's rows at `rar sample`'s default precision, on `gpu`
    ((memory, name): the GPU a preflight sample job ran on, as a submit host has none) or else
    the GPU `device` resolves to here; a SKIP when there is neither."""
    import torch

    from rar.runtime import resolve_device

    if gpu is None:
        dev = resolve_device(device)
        if dev.type != "cuda":
            return [
                Check(
                    "sampling memory",
                    None,
                    f"skipped: no GPU here (device {dev}) and no preflight sample job on one; "
                    "rehearse the sample stage on the GPU nodes to check that every sample "
                    "set's chunk fits their memory",
                )
            ]
        props = torch.cuda.get_device_properties(dev)
        gpu = (props.total_memory, props.name)
    memory, name = gpu
    return memory_checks(
        chunk_plans(study), memory, name, dtype=SampleSettings().dtype, config_file=config_file
    )
