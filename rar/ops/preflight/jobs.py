"""The preflight's jobs, run by `rar.ops.launch` on the nodes (every argument a plain value):
training at toy scale with a forced requeue and its uninterrupted twin, and sampling with its
timing. Split from the stages that launch them so that a job imports nothing of the report.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rar.experiments.records import METRICS_CSV


def read_tokens(shard_dir: str, rows: int):
    """Every sample of a token shard directory (the loader's own reading: sizes and sha256
    checked), repeated to `rows` rows -> (tokens (rows, N) int64, labels (rows,) int64)."""
    from rar.data.loader import TokenShards

    ds = TokenShards(shard_dir, batch_size=1 << 30, crops="all", shuffle=False, verify="sha256")
    tokens, labels = next(ds.iter_unit(worker=0, num_workers=1))
    reps = math.ceil(rows / len(tokens))
    return tokens.repeat(reps, 1)[:rows], labels.repeat(reps)[:rows]


def _usr_signal() -> int:
    """The signal SLURM sends before a time limit, as submitit listens for it (USR2)."""
    import submitit

    try:
        return getattr(signal, "SIG" + submitit.JobEnvironment().USR_SIG)
    except (RuntimeError, AttributeError):
        return signal.SIGUSR2


def _throughput(metrics_csv: Path, world_size: int) -> dict:
    """Steady-state training throughput from a run's metrics.csv (a row per step): the median
    images/s of the steps after the first two (start-up, compilation)."""
    import csv

    with open(metrics_csv) as f:
        rows = list(csv.DictReader(f))
    steady = [float(r["images_per_s"]) for r in rows[2:]] or [
        float(r["images_per_s"]) for r in rows
    ]
    rate = statistics.median(steady)
    return {
        "images_per_s": round(rate, 3),
        "images_per_s_per_gpu": round(rate / world_size, 3),
        "steps_timed": len(steady),
    }


def _time_limit_stopper(
    spec: dict, marker: Path, rank: int, should_stop: Callable[[], bool]
) -> Callable[[], bool]:
    """The interrupted run's stop test: at step `signal_at` (once: `marker` records it) rank 0
    sends itself the time-limit signal and waits for submitit's handler to ask the loop to
    stop ("signal"), or the loop just stops ("inline")."""
    seen = 0

    def stopper() -> bool:
        nonlocal seen
        seen += 1
        if should_stop():
            return True
        if marker.exists() or seen < spec["signal_at"]:
            return False
        if spec["interrupt"] == "inline":
            marker.write_text(json.dumps({"signal_at": seen}))
            return True
        if rank != 0:  # the others stop with rank 0, a step later (rar.runtime.AnyRank)
            return False
        marker.write_text(json.dumps({"signal_at": seen}))
        os.kill(os.getpid(), _usr_signal())  # what SLURM sends signal_delay_s before the limit
        deadline = time.monotonic() + 120
        while not should_stop() and time.monotonic() < deadline:
            time.sleep(0.05)  # submitit's handler (main thread) sets the stop flag
        return should_stop()

    return stopper


def _interrupted_run(
    run: Callable, cut: Path, spec: dict, rank: int, should_stop: Callable[[], bool]
) -> dict:
    """The run stopped at `signal_at` and resumed from its `last.pt`: in this process
    ("inline"), or ("signal") by the requeued job, for which this returns {"stopped_at"}.
    Rank 0 gets the steps it was signalled at, saved, resumed and ended at; others {}."""
    from rar.training.loop import load_checkpoint

    marker = cut / "signal.json"
    last = cut / "checkpoints" / "last.pt"
    resumed = load_checkpoint(last)["step"] if marker.exists() and last.exists() else None
    out = run(cut, _time_limit_stopper(spec, marker, rank, should_stop))
    if out.name != "final.pt":
        saved = load_checkpoint(out)["step"] if rank == 0 else None
        if rank == 0:
            marker.write_text(json.dumps({**json.loads(marker.read_text()), "saved": saved}))
        if spec["interrupt"] == "signal":
            return {"stopped_at": saved}  # the job is being requeued
        resumed = saved
        out = run(cut, should_stop)
    if rank != 0:
        return {}
    record = json.loads(marker.read_text()) if marker.exists() else {}
    return dict(
        signal_at=record.get("signal_at"),
        saved_step=record.get("saved"),
        resumed_step=resumed,
        final_step=load_checkpoint(out)["step"],
    )


def _layout_record(cfg, env, dev, reference: Path, reference_step: int) -> dict:
    """How the uninterrupted run ran (steps, device, precision, DDP backend, batches) and its
    steady-state throughput."""
    from rar.ops.bench import machine_description
    from rar.runtime import autocast_dtype, compile_enabled

    return dict(
        reference_step=reference_step,
        total_steps=cfg.total_steps,
        device=dev.type,
        machine=machine_description(dev),
        dtype="bf16" if autocast_dtype(cfg.precision, dev) else "fp32",
        compile=compile_enabled(cfg.compile, dev),  # "auto" as it resolved
        micro_batch=cfg.micro_batch or cfg.global_batch // env.world_size,
        global_batch=cfg.global_batch,
        backend="nccl"
        if dev.type == "cuda" and env.world_size > 1
        else ("gloo" if env.world_size > 1 else "none"),
        **_throughput(reference / METRICS_CSV, env.world_size),
    )


def _weights_compared(final: Path, reference: dict) -> dict:
    """The largest weight difference between the resumed run's final checkpoint and the
    uninterrupted one's model, and whether they are equal bit for bit."""
    import torch

    from rar.training.loop import load_checkpoint

    a, b = load_checkpoint(final)["model"], reference
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in b)
    return {"max_abs_diff": diff, "identical": all(torch.equal(a[k], b[k]) for k in b)}


def rehearse_training(spec: dict, workdir: str, *, should_stop: Callable[[], bool]) -> dict:
    """The training job: `spec["config"]` (a TrainConfig dict) on the tokens of
    `spec["data"]` (tiled in memory to two global batches), into `workdir`.

    spec["interrupt"]: "signal": at step `signal_at`, rank 0 sends itself the time-limit
        signal (USR2), so submitit's handler saves `last.pt` and requeues the job, which
        resumes; "inline" (debug backend): stop at that step and resume in this process;
        "none": only the uninterrupted run (throughput of another model size).
    Then the same run uninterrupted, and (rank 0) the comparison and the throughput.
    """
    from rar.data.batches import TensorBatchSource
    from rar.runtime import DistEnv, resolve_device
    from rar.settings.training import TrainConfig
    from rar.training.loop import load_checkpoint, train

    cfg = TrainConfig.from_dict(spec["config"], source="preflight training config")
    env = DistEnv.from_environ()
    tokens, labels = read_tokens(spec["data"], cfg.source_images)
    work = Path(workdir)

    def run(folder: Path, stop: Callable[[], bool]) -> Path:
        source = TensorBatchSource(tokens, labels, seed=cfg.seed)
        return train(cfg, folder, source=source, device=spec["device"], should_stop=stop)

    result: dict[str, Any] = {"model": cfg.model, "world_size": env.world_size}
    if spec["interrupt"] != "none":
        interrupted = _interrupted_run(run, work / "interrupted", spec, env.rank, should_stop)
        if "stopped_at" in interrupted:
            return interrupted
        result.update(interrupted)
    ref = run(work / "uninterrupted", should_stop)
    if env.rank != 0:
        return {}
    dev = resolve_device(spec["device"], env.local_rank)
    ref_ckpt = load_checkpoint(ref)
    result.update(_layout_record(cfg, env, dev, work / "uninterrupted", ref_ckpt["step"]))
    if spec["interrupt"] != "none":
        final = work / "interrupted" / "checkpoints" / "final.pt"
        result.update(_weights_compared(final, ref_ckpt["model"]))
    return result


def rehearse_sampling(
    checkpoint: str,
    tokenizer: str,
    out: str,
    *,
    num_classes: int,
    sampling: dict,
    dtype: str,
    device: str,
    bench_batch: int,
    bench_steps: int,
) -> dict:
    """The sampling job: one image per class with `rar.sampling.sampler.sample` (KV cache,
    guidance), then (rank 0) the timing of `bench_batch`-image batches, decoding included
    (`time_sampling`)."""
    from rar.sampling.sampler import sample

    info = sample(
        checkpoint,
        tokenizer,
        out,
        num_per_class=1,
        num_classes=num_classes,
        chunk_size=num_classes,
        seed=0,
        device=device,
        dtype=dtype,
        progress=False,
        **sampling,
    )
    if info is None:  # not rank 0
        return {}
    timing = time_sampling(
        checkpoint,
        tokenizer,
        labels=[c % num_classes for c in range(bench_batch)],
        sampling=sampling,
        dtype=dtype,
        device=device,
        steps=bench_steps,
    )
    return {"num_samples": info["num_samples"], **timing, "world_size": info.get("world_size")}


def time_sampling(
    checkpoint: str,
    tokenizer: str,
    *,
    labels: list[int],
    sampling: dict,
    dtype: str,
    device: str,
    steps: int,
) -> dict:
    """Images per second of one GPU: batches of `labels` generated with `sampling` and decoded,
    the mean of `steps` after a warm-up; with the batch size, precision and machine."""
    import torch

    from rar.model.checkpoint import load_generator
    from rar.model.generate import generate
    from rar.model.tokenizer import decode_to_uint8, load_tokenizer
    from rar.ops.bench import machine_description, seconds_per_call
    from rar.runtime import DistEnv, autocast_dtype, resolve_device
    from rar.settings.stages import SamplingConfig

    dev = resolve_device(device, DistEnv.from_environ().local_rank)
    model, _ = load_generator(checkpoint)
    model.to(dev)
    tok = load_tokenizer(tokenizer).to(dev)
    amp = autocast_dtype(dtype, dev)
    batch_labels = torch.tensor(labels, device=dev)
    gen = torch.Generator(dev).manual_seed(0)
    settings = SamplingConfig(**sampling)

    def batch() -> None:
        ids = generate(model, batch_labels, settings, generator=gen, dtype=amp)
        decode_to_uint8(tok, ids)

    seconds = seconds_per_call(batch, steps, dev).mean_s  # after a warm-up, synchronised
    gpu = {}
    if dev.type == "cuda":  # for the sampling memory check, which the submit host cannot do
        props = torch.cuda.get_device_properties(dev)
        gpu = {"device_name": props.name, "device_memory": props.total_memory}
    return {
        "images_per_s_per_gpu": round(len(labels) / seconds, 3),
        "batch_size": len(labels),
        "dtype": "bf16" if amp is not None else "fp32",
        "device": dev.type,
        "machine": machine_description(dev),
        **gpu,
    }
