"""Training: the paper's recipe, exact resume, branching from a trunk, DDP.

`train(config, workdir)` trains one run into `workdir` and resumes from
`workdir/checkpoints/last.pt` when it exists. Everything random in a step (label dropout, the
permutation draws, dropout masks) is seeded from (seed, step, chunk), where a chunk is one
micro-batch of the global batch; the data position follows from the step. So a run stopped at
any step and resumed from its checkpoint ends bit-identical (on CPU at any thread count, the
same for both runs: the CPU always trains with deterministic algorithms) to an uninterrupted run,
a branch from a trunk checkpoint equals the run trained from scratch, and the result does not
depend on how the global batch is split over GPUs and accumulation steps (to fp tolerance).

Beside metrics.csv, a `Watcher` (rar.watch) shows the run to people without touching its
weights. The batches come from a `BatchSource` (rar.data.batches); the run's checkpoints and
the resume checks live in rar.resume; devices, precision and DDP's environment in rar.runtime.
`_train` sets a call up in named steps (finished already?, the batch split, `restore`) into a
`Job`, and `_loop` runs it one `optimizer_step` at a time: each seam is a function of its own,
so the loop reads on one screen.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from rar.config import TrainConfig
from rar.data.batches import BatchSource, ShardBatchSource, check_data, stream_from
from rar.model import RAR, rar_config
from rar.orders import order_generator, randomness_ratio, sample_orders, scan_order, shuffle
from rar.records import stdout_log, write_failure
from rar.resume import (
    LAST,
    LAST_NEXT,
    LAST_PREV,
    check_compatible,
    code_version,
    find_resume_point,
    load_checkpoint,
    save_checkpoint,
    save_last,
    set_aside,
)
from rar.runtime import (
    CompileTime,
    DistEnv,
    FirstNonFinite,
    autocast,
    autocast_dtype,
    compile_enabled,
    derive_seed,
    deterministic_algorithms,
    inductor_cache,
    resolve_device,
    tf32,
    to_device,
)
from rar.validate import HeldOut
from rar.watch import MetricsLog, StepLog, Watcher, find_heldout, find_tokenizer

# ##########################################################################################
# Recipe: optimizer, schedule, loss
# ##########################################################################################


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """The official name filter (bytedance/1d-tokenizer `utils/train_utils.create_optimizer`):
    no decay on vectors and on any name containing "ln", "bias", "embed", "norm" or "gamma".
    Note what it catches as written: `adaln_before_head.*` ("adaln" contains "ln") is exempt,
    while the blocks' `adaLN_modulation` weights (upper case) and `cls_token` are decayed. We
    follow it as written, so our runs train the model the paper trained."""
    return param.ndim < 2 or any(s in name for s in ("ln", "bias", "embed", "norm", "gamma"))


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if no_weight_decay(name, p) else decay).append(p)
    return torch.optim.AdamW(
        [
            {"params": no_decay, "weight_decay": 0.0},
            {"params": decay, "weight_decay": cfg.weight_decay},
        ],
        lr=cfg.lr,
        betas=cfg.betas,
        # One fused kernel per step (torch has it for CPUs and GPUs): on a CPU, rar_tiny's
        # AdamW step takes about a quarter of the default per-tensor loop's time.
        fused=bool(decay) and decay[0].device.type in ("cpu", "cuda"),
    )


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warmup from 0 over `warmup_epochs`, then cosine decay to `min_lr` at the end
    (the official `get_cosine_schedule_with_warmup` with an end learning rate)."""
    warmup, total = cfg.step_at(cfg.warmup_epochs), cfg.total_steps
    if step < warmup:
        return cfg.lr * step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def loss_and_accuracy(
    model: nn.Module,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    orders: torch.Tensor,
    *,
    amp: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over all N targets of a batch, and token accuracy (detached).

    tokens: (B, N) raster codes; labels: (B,) after label dropout; orders: (B, N).
    """
    with autocast(tokens.device, amp):
        logits = model(tokens, labels, orders)  # (B, N, codebook)
    targets = shuffle(tokens, orders)  # logits[:, k] predicts the k-th token visited
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    accuracy = (logits.argmax(-1) == targets).float().mean().detach()
    return loss, accuracy


def model_from_config(cfg: TrainConfig) -> RAR:
    return RAR(
        rar_config(
            cfg.model,
            architecture=cfg.architecture,
            codebook_size=cfg.codebook_size,
            num_classes=cfg.num_classes,
            num_tokens=cfg.num_tokens,
            dropout=cfg.dropout,
            attn_dropout=cfg.attn_dropout,
        )
    )


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
        answer to a time-limit or preemption signal).
    max_steps: stop (with `last.pt`) after this many steps in this call; for tests.
    until_epoch: train one segment: stop at `until_epoch`, write `epoch_<E>.pt` (and
        `last.pt`, to continue from) and return it. The workflow trains a trunk in segments
        so that branches can start as soon as their anneal start is reached.
    heldout: the held-out tokens of `cfg.val_every` (rar.validate.load_heldout), or a string
        saying why there are none (printed once; validation is then off).
    tokenizer: decodes the sample grids of `cfg.sample_every` (a rar.tokenizer.Tokenizer), or
        a string saying why there is none.
    Loggers (`cfg.tensorboard`, `cfg.wandb`): rar.tracking, on rank 0.

    On the CPU, and on GPUs with `cfg.deterministic`, the run uses deterministic algorithms
    (`deterministic_algorithms`); on GPUs, TF32 (`tf32`). `cfg.compile` ("auto": on GPUs,
    `compile_enabled`) compiles the model, with inductor's cache in `workdir/.inductor-cache`
    (`inductor_cache`) for a requeued job to reuse, and prints the compile time
    (`CompileTime`). The caller's settings are restored on return.
    """
    device = resolve_device(device, DistEnv.from_environ().local_rank)
    deterministic = device.type == "cpu" or cfg.deterministic
    compiled = compile_enabled(cfg.compile, device)
    with (
        deterministic_algorithms(deterministic, device),
        tf32(device),
        inductor_cache(workdir if compiled else None),
    ):
        return _train(
            cfg, workdir, source=source, init_from=init_from, device=device,
            should_stop=should_stop, max_steps=max_steps, until_epoch=until_epoch,
            heldout=heldout, tokenizer=tokenizer, compiled=compiled,
        )  # fmt: skip


# ##########################################################################################
# Setting a call up: finished or not, the batch split, restore
# ##########################################################################################


def segment_end_of(cfg: TrainConfig, ckpt_dir: Path, until_epoch: float | None) -> Path | None:
    """The named checkpoint a segment ends with; None when this call trains to the end."""
    if until_epoch is not None and cfg.step_at(until_epoch) < cfg.total_steps:
        return ckpt_dir / f"epoch_{until_epoch:g}.pt"
    return None


def finished_checkpoint(ckpt_dir: Path, segment_end: Path | None) -> Path | None:
    """The checkpoint this call ends with when it exists already (nothing to train), else None.
    A finished run whose segment checkpoint is gone cannot make it again: ValueError."""
    final = ckpt_dir / "final.pt"
    if segment_end is not None and segment_end.exists():
        return segment_end
    if final.exists() and segment_end is None:
        return final
    if final.exists():
        raise ValueError(f"{ckpt_dir.parent} is finished, and its checkpoint {segment_end} is gone")
    return None


def batch_split(cfg: TrainConfig, world_size: int) -> tuple[int, int]:
    """(micro-batch, accumulation steps) of one process: the global batch is world_size x
    accumulation x micro-batch."""
    micro = cfg.micro_batch or cfg.global_batch // world_size
    if cfg.global_batch % (micro * world_size):
        raise ValueError(
            f"global_batch {cfg.global_batch} is not a multiple of micro_batch {micro} x "
            f"{world_size} processes"
        )
    return micro, cfg.global_batch // (micro * world_size)


def restore(
    cfg: TrainConfig,
    ckpt_dir: Path,
    *,
    model: RAR,
    optimizer: torch.optim.Optimizer,
    init_from: str | Path | None,
    env: DistEnv,
) -> tuple[int, bool]:
    """Load this run's newest checkpoint that loads (last.pt, else its predecessors) into
    `model` and `optimizer`; a branch starts from `init_from` only when the run has no
    checkpoint at all. Returns (the step, whether the run had a checkpoint of its own)."""
    point = find_resume_point(ckpt_dir)
    resume_from, ckpt, branch = (point.path, point.ckpt, False) if point else (None, None, False)
    if point is None and init_from:
        resume_from, branch = Path(init_from), True
        ckpt = load_checkpoint(resume_from)
    step = 0
    if resume_from is not None:
        check_compatible(cfg, ckpt, resume_from, branch=branch)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        if env.rank == 0:
            what = "branching" if branch else "resuming"
            print(f"{what} from {resume_from} at step {step}", flush=True)
    if point is not None and point.path != ckpt_dir / LAST:
        env.barrier()  # every rank has read the files before any is renamed
        if env.rank == 0:
            set_aside(point, ckpt_dir.parent / "metrics.csv")
    return step, point is not None


def stop_step_of(
    cfg: TrainConfig, step: int, until_epoch: float | None, segment_end: Path | None
) -> tuple[int, dict[int, float]]:
    """Where this call stops (the run's end, or a segment's), and the named checkpoints'
    steps -> epochs (`checkpoint_epochs`, and the segment's end)."""
    named_steps = {cfg.step_at(e): e for e in cfg.checkpoint_epochs}
    if segment_end is None:
        return cfg.total_steps, named_steps
    stop_step = cfg.step_at(until_epoch)
    named_steps[stop_step] = until_epoch
    if step > stop_step:
        raise ValueError(
            f"{segment_end.parent / LAST} is at step {step}, past epoch {until_epoch:g} (step "
            f"{stop_step}), and {segment_end} is missing: retrain the run to re-create it"
        )
    return stop_step, named_steps


@dataclass
class Job:
    """What the optimizer steps of one call work with (`_train` sets it up)."""

    cfg: TrainConfig
    ckpt_dir: Path
    model: RAR  # the module whose weights are saved
    ddp: nn.Module  # the module that runs: DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    env: DistEnv
    device: torch.device
    amp: torch.dtype | None
    target: torch.Tensor  # (N,) the target scan order
    streams: list[Iterator[tuple[torch.Tensor, torch.Tensor]]]  # one per accumulation step
    nonfinite: FirstNonFinite = field(init=False)  # the first non-finite loss, on the device
    compiled: bool = False  # `ddp` is torch.compile'd

    def __post_init__(self) -> None:
        self.nonfinite = FirstNonFinite(self.device)

    @property
    def last(self) -> Path:
        return self.ckpt_dir / LAST

    def check_finite(self) -> None:
        """FloatingPointError naming the first step whose loss was not finite, if any. The
        loop calls it at log steps, and `save` before every checkpoint: a NaN stops the run at
        the next log step (up to `log_every` - 1 steps later, trained on NaN weights that are
        never saved; a validation or sample grid due in between sees them), or at the next
        checkpoint if that comes first, and the checkpoints on disk stay finite. One host
        synchronisation, where the log line reads the device anyway. All ranks hold the same
        all-reduced loss, so all stop at the same step."""
        bad = self.nonfinite.first()
        if bad is not None:
            step, loss = bad
            raise FloatingPointError(
                f"non-finite loss ({loss}) at step {step} (epoch {self.cfg.epoch_at(step):.3f}); "
                f"the last good checkpoint is {self.last}"
            )

    def save(self, path: Path, step: int, *, may_fail: bool = False) -> None:
        """Rank 0 writes, every rank waits; never a checkpoint of non-finite training
        (`check_finite`). may_fail: a periodic `last.pt` that cannot be written (disk full) is
        reported and the run goes on; the previous one stays valid, and the next interval tries
        again."""
        self.check_finite()
        if self.env.rank == 0:
            state = dict(
                model=self.model.state_dict(),
                optimizer=self.optimizer.state_dict(),
                step=step,
                epoch=self.cfg.epoch_at(step),
                config=self.cfg.to_dict(),
                model_config=self.model.config.__dict__,
                code_version=code_version(),
            )
            try:
                (save_last if path == self.last else save_checkpoint)(path, **state)
            except OSError as err:
                if not may_fail:
                    raise
                print(f"WARNING: could not write {path} at step {step} ({err})", flush=True)
        self.env.barrier()


def _train(
    cfg: TrainConfig,
    workdir: str | Path,
    *,
    source: BatchSource,
    init_from: str | Path | None,
    device: torch.device,
    should_stop: Callable[[], bool],
    max_steps: int | None,
    until_epoch: float | None,
    heldout: HeldOut | str | None,
    tokenizer,
    compiled: bool,
) -> Path:
    workdir = Path(workdir)
    ckpt_dir = workdir / "checkpoints"
    segment_end = segment_end_of(cfg, ckpt_dir, until_epoch)
    done = finished_checkpoint(ckpt_dir, segment_end)
    if done is not None:
        return done
    env = DistEnv.from_environ()
    env.init_process_group(device)
    micro, accum = batch_split(cfg, env.world_size)
    torch.manual_seed(cfg.seed)  # the initial weights; every later draw is seeded per step
    model = model_from_config(cfg).to(device)
    optimizer = build_optimizer(model, cfg)
    step, own_checkpoint = restore(
        cfg, ckpt_dir, model=model, optimizer=optimizer, init_from=init_from, env=env
    )
    # The workflow writes this file first (the run's identity): leave it and its mtime alone,
    # also when --settings changed what lies outside the identity (a rewrite would make
    # Snakemake retrain); a resume of another run was refused above.
    if env.rank == 0 and not (workdir / "config.yaml").exists():
        cfg.save(workdir / "config.yaml")
    metrics = MetricsLog(workdir / "metrics.csv", step) if env.rank == 0 else None
    ddp = model
    if env.world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if compiled:
        ddp = torch.compile(ddp)
        if env.rank == 0:
            cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
            print(f"torch.compile (compile: {cfg.compile}), inductor's cache {cache}", flush=True)
    chunks = env.world_size * accum  # micro-batches per global batch, over all ranks
    job = Job(
        cfg, ckpt_dir, model, ddp, optimizer, env, device, autocast_dtype(cfg.precision, device),
        target=scan_order(cfg.target_order, model.config.grid),
        streams=[
            stream_from(source, start_step=step, rank=env.rank * accum + a, world_size=chunks,
                        batch_size=micro)
            for a in range(accum)
        ],
        compiled=compiled,
    )  # fmt: skip
    stop_step, named_steps = stop_step_of(cfg, step, until_epoch, segment_end)
    watch = Watcher(
        cfg, workdir, model=model, env=env, device=device, amp=job.amp, step=step,
        own_checkpoint=own_checkpoint, init_from=init_from, heldout=heldout,
        tokenizer=tokenizer, batch_size=micro,
    )  # fmt: skip
    try:
        return _loop(
            job, step=step, stop_step=stop_step, named_steps=named_steps,
            segment_end=segment_end, watch=watch, metrics=metrics, should_stop=should_stop,
            max_steps=max_steps,
        )  # fmt: skip
    finally:
        watch.close()


# ##########################################################################################
# The loop: one optimizer step, its log line, checkpoints and stops
# ##########################################################################################


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


def _loop(
    job: Job,
    *,
    step: int,
    stop_step: int,
    named_steps: dict[int, float],
    segment_end: Path | None,
    watch: Watcher,
    metrics: MetricsLog | None,
    should_stop: Callable[[], bool],
    max_steps: int | None,
) -> Path:
    """The optimizer steps from `step` to `stop_step`, with logs, checkpoints and the watcher;
    returns the checkpoint it ends with: `last.pt` when stopped early, else `_finish`'s."""
    cfg = job.cfg
    job.model.train()
    start_step, log = step, StepLog(cfg, metrics, watch)
    compile_time = CompileTime(job.compiled, job.device, job.env.rank)
    t_last_ckpt = time.monotonic()
    while step < stop_step:
        stats = compile_time.timed(optimizer_step, job, step)
        step += 1
        if log.due(step):  # every rank, as the loss is the same on all
            job.check_finite()
        log.after(step, stats)
        if step in named_steps:
            job.save(job.ckpt_dir / f"epoch_{named_steps[step]:g}.pt", step)
        stop = should_stop() or (max_steps is not None and step - start_step >= max_steps)
        stop = job.env.any(stop, job.device)  # every rank stops at the same step
        due = time.monotonic() - t_last_ckpt >= cfg.checkpoint_minutes * 60
        if (due or stop) and step < cfg.total_steps:
            job.save(job.last, step, may_fail=not stop)
            t_last_ckpt = time.monotonic()
        if stop and step < cfg.total_steps:
            return job.last
    return _finish(job, step, segment_end)


def _finish(job: Job, step: int, segment_end: Path | None) -> Path:
    """A trunk segment keeps `last.pt` for the next segment; a finished run writes `final.pt`,
    makes `last.pt` a hard link to it (no disk of its own) and removes last.pt's
    predecessors. The link is what keeps a finished run finished when its final.pt is
    deleted (Snakemake deletes the outputs of a job it reruns, e.g. one it saw as
    incomplete after it died while the job ran on): the rerun resumes at the last step and
    writes final.pt again, training nothing."""
    if segment_end is not None:
        if not segment_end.exists():  # resumed exactly at the boundary
            job.save(segment_end, step)
        job.save(job.last, step)
        return segment_end
    final = job.ckpt_dir / "final.pt"
    job.save(final, step)
    if job.env.rank == 0:
        for name in (LAST_PREV, LAST_NEXT):
            (job.ckpt_dir / name).unlink(missing_ok=True)
        link = job.ckpt_dir / f".{LAST}.link"
        link.unlink(missing_ok=True)
        os.link(final, link)
        os.replace(link, job.last)
    return final


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

    settings: keys outside the run's identity (rar.config.OUTSIDE_IDENTITY) that override the
        file's: the workflow passes the study's current ones, so a config edit (a new
        FID-vs-epoch checkpoint, logging) reaches the job without rewriting the run's file.
    A failure leaves `failure.txt` in `workdir` (rar.status), written from inside the job so
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
