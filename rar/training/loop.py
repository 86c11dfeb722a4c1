"""Training: the paper's recipe, exact resume, branching from a trunk, DDP.

`train(config, workdir)` trains one run into `workdir` and resumes from
`workdir/checkpoints/last.pt` when it exists. Everything random in a step (label dropout, the
permutation draws, dropout masks) is seeded from (seed, step, chunk), where a chunk is one
micro-batch of the global batch; the data position follows from the step. So a run stopped at
any step and resumed from its checkpoint ends bit-identical (on CPU at any thread count, the
same for both runs: the CPU always trains with deterministic algorithms) to an uninterrupted run,
a branch from a trunk checkpoint equals the run trained from scratch, and the result does not
depend on how the global batch is split over GPUs and accumulation steps (to fp tolerance).

Beside metrics.csv, a `Watcher` (rar.training.watch) shows the run to people without touching its
weights. The batches come from a `BatchSource` (rar.data.batches); the run's checkpoints and
the resume checks live in rar.training.resume; devices, precision and DDP's environment in
rar.runtime; the recipe (optimizer, schedule, loss) in rar.training.recipe. `train` sets a call up
once into a `Job` (rar.training.job: finished already?, the batch split, `restore`) and its `Stops`,
and `_loop` reads them, one `optimizer_step` at a time: each seam is a function of its own, so the
loop reads on one screen.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from rar.data.batches import BatchSource, ShardBatchSource, check_data
from rar.evaluation.heldout import HeldOut
from rar.experiments.records import checkpoint_name, stdout_log, write_failure
from rar.model.orders import order_generator, randomness_ratio, sample_orders
from rar.runtime import (
    AnyRank,
    CompileTime,
    DistEnv,
    compile_enabled,
    derive_seed,
    deterministic_algorithms,
    inductor_cache,
    resolve_device,
    tf32,
    to_device,
)
from rar.settings.training import TrainConfig
from rar.training.job import (
    Job,
    Stops,
    batch_split,
    finish,
    finished_checkpoint,
    segment_end_of,
    start_job,
    stop_step_of,
)
from rar.training.recipe import (
    build_optimizer,
    learning_rate,
    loss_and_accuracy,
    model_from_config,
    no_weight_decay,
)
from rar.training.resume import code_version, load_checkpoint, save_checkpoint
from rar.training.watch import StepLog, Watcher, find_heldout, find_tokenizer

# What other modules and the tests import from here (the call and its pieces).
__all__ = [
    "Job",
    "StepLog",
    "batch_split",
    "build_optimizer",
    "code_version",
    "finished_checkpoint",
    "learning_rate",
    "load_checkpoint",
    "loss_and_accuracy",
    "model_from_config",
    "no_weight_decay",
    "optimizer_step",
    "run",
    "save_checkpoint",
    "segment_end_of",
    "stop_step_of",
    "train",
]


# ##########################################################################################
# A call: set up once (rar.training.job), then the loop
# ##########################################################################################


def train(
    cfg: TrainConfig,
    workdir: str | Path,
    *,
    source: BatchSource,
    init_from: str | Path | None = None,
    device: str | torch.device = "auto",
    should_stop: Callable[[], bool] = lambda: False,
    max_steps: int | None = None,
    until_epoch: float | None = None,
    heldout: HeldOut | str | None = None,
    tokenizer=None,
) -> Path:
    """Train (or resume) the run `cfg` in `workdir`; return the final checkpoint's path.

    source: where the token batches come from (`BatchSource`).
    init_from: a named checkpoint of another run to branch from (ignored when this run has
        checkpoints of its own to resume from).
    should_stop: polled after every step; True saves `last.pt` and returns it (the launcher's
        answer to a time-limit or preemption signal). With several processes, a True on any
        rank stops every rank one step later, at the same step (`rar.runtime.AnyRank`: no
        host synchronisation per step).
    max_steps: stop (with `last.pt`) after this many steps in this call; for tests.
    until_epoch: train one segment: stop at `until_epoch`, write `epoch_<E>.pt` (and
        `last.pt`, to continue from) and return it. The workflow trains a trunk in segments
        so that branches can start as soon as their anneal start is reached.
    heldout: the held-out tokens of `cfg.val_every` (rar.evaluation.heldout.load_heldout), or a
    string
        saying why there are none (printed once; validation is then off).
    tokenizer: decodes the sample grids of `cfg.sample_every` (a rar.model.tokenizer.Tokenizer), or
        a string saying why there is none.
    Loggers (`cfg.tensorboard`, `cfg.wandb`): rar.training.tracking, on rank 0.

    On the CPU, and on GPUs with `cfg.deterministic`, the run uses deterministic algorithms
    (`deterministic_algorithms`); on GPUs, TF32 (`tf32`). `cfg.compile` ("auto": on GPUs,
    `compile_enabled`) compiles the model, with inductor's cache in `workdir/.inductor-cache`
    (`inductor_cache`) for a requeued job to reuse, and prints the compile time
    (`CompileTime`). The caller's settings are restored on return.
    """
    device = resolve_device(device, DistEnv.from_environ().local_rank)
    compiled = compile_enabled(cfg.compile, device)
    with (
        deterministic_algorithms(device.type == "cpu" or cfg.deterministic, device),
        tf32(device),
        inductor_cache(workdir if compiled else None),
    ):
        workdir = Path(workdir)
        segment_end = segment_end_of(cfg, workdir / "checkpoints", until_epoch)
        done = finished_checkpoint(workdir / "checkpoints", segment_end)
        if done is not None:
            return done
        job = start_job(
            cfg, workdir, source=source, init_from=init_from, device=device, compiled=compiled
        )
        stop_step, named_steps = stop_step_of(cfg, job.start, until_epoch, segment_end)
        stops = Stops(stop_step, named_steps, segment_end, should_stop, max_steps)
        watch = Watcher(
            cfg,
            workdir,
            model=job.model,
            env=job.env,
            device=device,
            amp=job.amp,
            step=job.start,
            own_checkpoint=job.own_checkpoint,
            init_from=init_from,
            heldout=heldout,
            tokenizer=tokenizer,
            batch_size=batch_split(cfg, job.env.world_size)[0],
        )
        try:
            return _loop(job, stops, watch)
        finally:
            watch.close()


def micro_batch(
    job: Job, step: int, a: int, ratio: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The `a`-th micro-batch of this rank at `step`, on the device: tokens (B, N), labels (B,)
    after label dropout, orders (B, N). Every draw is seeded from (seed, step, chunk), the
    dropout masks' too (the global RNG, seeded here)."""
    cfg = job.cfg
    chunk = job.env.rank * len(job.streams) + a
    tokens, labels = next(job.streams[a])
    g = order_generator(cfg.seed, step, chunk)
    drop = torch.rand(labels.shape, generator=g) < cfg.class_dropout
    labels = torch.where(drop, job.model.config.null_class, labels)
    orders = sample_orders(len(tokens), cfg.num_tokens, ratio, job.target, g)
    torch.manual_seed(derive_seed(cfg.seed, step, chunk, 1))  # dropout masks
    return tuple(to_device(t, job.device) for t in (tokens, labels, orders))


def optimizer_step(job: Job, step: int) -> dict:
    """One optimizer step at `step`: the global batch as `accum` micro-batches per rank,
    gradients synchronised on the last; returns the loss and accuracy (averaged over the
    global batch; tensors, read only when logged), lr, r and the gradient norm (a tensor).
    Nothing in it waits for the device: a non-finite loss is noted on the device
    (`Job.nonfinite`) and the step is taken all the same; `Job.check_finite` raises for it."""
    cfg, accum = job.cfg, len(job.streams)
    lr = learning_rate(step, cfg)
    for group in job.optimizer.param_groups:
        group["lr"] = lr
    ratio = randomness_ratio(cfg.epoch_at(step), cfg.anneal_start, cfg.anneal_end)
    stats = torch.zeros(2, device=job.device)  # loss, accuracy
    for a in range(accum):
        tokens, labels, orders = micro_batch(job, step, a, ratio)
        sync = a == accum - 1 or job.env.world_size == 1
        with contextlib.nullcontext() if sync else job.ddp.no_sync():
            loss, accuracy = loss_and_accuracy(job.ddp, tokens, labels, orders, amp=job.amp)
            (loss / accum).backward()
        stats += torch.stack([loss.detach(), accuracy]) / accum
    if job.env.world_size > 1:
        dist.all_reduce(stats)
        stats /= job.env.world_size
    job.nonfinite.note(step, stats[0])  # read at the next log step or save (`check_finite`)
    grad_norm = nn.utils.clip_grad_norm_(job.model.parameters(), cfg.grad_clip)
    job.optimizer.step()
    job.optimizer.zero_grad(set_to_none=True)
    return dict(loss=stats[0], accuracy=stats[1], lr=lr, ratio=ratio, grad_norm=grad_norm)


def _loop(job: Job, stops: Stops, watch: Watcher) -> Path:
    """The optimizer steps from `job.start` to `stops.step`, with logs, checkpoints and the
    watcher; returns the checkpoint it ends with: `last.pt` when stopped early, else `finish`'s."""
    cfg, step = job.cfg, job.start
    job.model.train()
    log = StepLog(cfg, job.metrics, watch)
    compile_time = CompileTime(job.compiled, job.device, job.env.rank)
    signalled = AnyRank(job.env, job.device)
    t_last_ckpt = time.monotonic()
    while step < stops.step:
        stats = compile_time.timed(optimizer_step, job, step)
        step += 1
        if log.due(step):  # every rank, as the loss is the same on all
            job.check_finite()
        log.after(step, stats)
        if step in stops.named_steps:
            job.save(job.ckpt_dir / checkpoint_name(stops.named_steps[step]), step)
        stop = stops.requested(step - job.start, signalled)  # the same step on every rank
        due = time.monotonic() - t_last_ckpt >= cfg.checkpoint_minutes * 60
        if (due or stop) and step < cfg.total_steps:
            job.save(job.last, step, may_fail=not stop)
            t_last_ckpt = time.monotonic()
        if stop and step < cfg.total_steps:
            return job.last
    return finish(job, step, stops.segment_end)


# ##########################################################################################
# The command
# ##########################################################################################


def run(
    config_path: str | Path,
    workdir: str | Path,
    *,
    init_from: str | Path | None = None,
    device: str = "auto",
    should_stop: Callable[[], bool] = lambda: False,
    until_epoch: float | None = None,
    settings: dict | None = None,
) -> Path:
    """`rar train`: train the run described by the YAML file `config_path` on its shards.

    settings: keys outside the run's identity (rar.settings.training.OUTSIDE_IDENTITY) that override
    the
        file's: the workflow passes the study's current ones, so a config edit (a new
        FID-vs-epoch checkpoint, logging) reaches the job without rewriting the run's file.
    A failure leaves `failure.txt` in `workdir` (rar.ops.status), written from inside the job so
    that it is there even when the launching process died before the job did."""
    try:
        cfg = TrainConfig.load(config_path)
        if settings:
            cfg = cfg.with_settings(settings, source=f"{config_path} + --settings")
        if not cfg.data:
            raise ValueError(f"{config_path}: key 'data' (the token shard directory) is not set")
        source = ShardBatchSource(cfg.data, seed=cfg.seed, workers=cfg.data_workers)
        check_data(cfg, source.manifest, f"{config_path}: data {cfg.data}")
        return train(
            cfg,
            workdir,
            source=source,
            init_from=init_from,
            device=device,
            should_stop=should_stop,
            until_epoch=until_epoch,
            heldout=find_heldout(cfg, source.manifest) if cfg.val_every > 0 else None,
            tokenizer=(  # rank 0 draws the sample grids
                find_tokenizer(source.manifest)
                if cfg.sample_every > 0 and DistEnv.from_environ().rank == 0
                else None
            ),
        )
    except Exception as err:
        if DistEnv.from_environ().rank == 0:
            with contextlib.suppress(OSError):  # never hide the error behind this one
                write_failure(workdir, err, logs=[stdout_log()] if stdout_log() else [])
        raise
