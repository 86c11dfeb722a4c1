"""A training call's `Job`, set up once and read by the loop (rar.training.loop): is the call
finished already, the batch split over processes and accumulation steps, `restore` (resume or
branch), where the call stops (`Stops`), the checkpoints it saves and how it ends (`finish`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from rar.data.batches import BatchSource, stream_from
from rar.experiments.records import METRICS_CSV, MetricsLog, checkpoint_name
from rar.model.orders import scan_order
from rar.model.transformer import RAR
from rar.runtime import DistEnv, FirstNonFinite, autocast_dtype
from rar.settings.training import TrainConfig
from rar.training.recipe import build_optimizer, model_from_config
from rar.training.resume import (
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


def segment_end_of(cfg: TrainConfig, ckpt_dir: Path, until_epoch: float | None) -> Path | None:
    """The named checkpoint a segment ends with; None when this call trains to the end."""
    if until_epoch is not None and cfg.step_at(until_epoch) < cfg.total_steps:
        return ckpt_dir / checkpoint_name(until_epoch)
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
            set_aside(point, ckpt_dir.parent / METRICS_CSV)
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


@dataclass(frozen=True)
class Stops:
    """Where a call stops: at `step` (the run's end or its segment's), or earlier when
    `should_stop` says so or after `max_steps` steps; the named checkpoints on the way (steps
    -> epochs, `stop_step_of`) and the segment's own (None when the call trains to the end)."""

    step: int
    named_steps: dict[int, float]
    segment_end: Path | None
    should_stop: Callable[[], bool]
    max_steps: int | None

    def requested(self, steps_trained: int, agree: Callable[[bool], bool]) -> bool:
        """A stop before `step`: asked for on any rank (`agree`: rar.runtime.AnyRank, which
        is called at every step and answers for the step before when there are several
        processes), or `max_steps` trained in this call (the same step on every rank)."""
        asked = agree(self.should_stop())
        return asked or (self.max_steps is not None and steps_trained >= self.max_steps)


@dataclass
class Job:
    """What the optimizer steps of one call work with (`start_job` sets it up, the loop of
    rar.training.loop reads it)."""

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
    start: int = 0  # the step this call starts at (restored)
    own_checkpoint: bool = False  # the run had a checkpoint of its own (it resumed)
    metrics: MetricsLog | None = None  # metrics.csv, on rank 0

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


def start_job(
    cfg: TrainConfig,
    workdir: Path,
    *,
    source: BatchSource,
    init_from: str | Path | None,
    device: torch.device,
    compiled: bool,
) -> Job:
    """The Job of a call with steps to train: the process group, the batch split, the model at
    the run's seed and its optimizer, restored (`restore`); the run's config.yaml and
    metrics.csv (rank 0), the module that runs (`_runner`), one batch stream per accumulation
    step from the restored step on."""
    ckpt_dir = workdir / "checkpoints"
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
    metrics = MetricsLog(workdir / METRICS_CSV, step) if env.rank == 0 else None
    runner = _runner(model, cfg, env, device, compiled)
    chunks = env.world_size * accum  # micro-batches per global batch, over all ranks
    streams = [
        stream_from(
            source, start_step=step, rank=env.rank * accum + a, world_size=chunks, batch_size=micro
        )
        for a in range(accum)
    ]
    return Job(
        cfg,
        ckpt_dir,
        model,
        runner,
        optimizer,
        env,
        device,
        autocast_dtype(cfg.precision, device),
        target=scan_order(cfg.target_order, model.config.grid),
        streams=streams,
        compiled=compiled,
        start=step,
        own_checkpoint=own_checkpoint,
        metrics=metrics,
    )


def _runner(
    model: RAR, cfg: TrainConfig, env: DistEnv, device: torch.device, compiled: bool
) -> nn.Module:
    """The module that runs the steps: `model` DDP-wrapped over several processes, and
    torch.compile'd when `compiled`."""
    runner = model
    if env.world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        runner = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if compiled:
        runner = torch.compile(runner)
        if env.rank == 0:
            cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
            print(f"torch.compile (compile: {cfg.compile}), inductor's cache {cache}", flush=True)
    return runner


def finish(job: Job, step: int, segment_end: Path | None) -> Path:
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
