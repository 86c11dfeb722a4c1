"""Training: the paper's recipe, exact resume, branching from a trunk, DDP.

`train(config, workdir)` trains one run into `workdir` and resumes from
`workdir/checkpoints/last.pt` when it exists. Everything random in a step (label dropout, the
permutation draws, dropout masks) is seeded from (seed, step, chunk), where a chunk is one
micro-batch of the global batch; the data position follows from the step. So a run stopped at
any step and resumed from its checkpoint ends bit-identical (on CPU at any thread count, the
same for both runs: the CPU always trains with deterministic algorithms) to an uninterrupted run,
a branch from a trunk checkpoint equals the run trained from scratch, and the result does not
depend on how the global batch is split over GPUs and accumulation steps (to fp tolerance).

Beside metrics.csv, a `Watcher` shows the run to people without touching its weights:
TensorBoard / W&B (rar.tracking), the held-out NLL (validation.csv) and sample grids
(rar.validate), and an ETA on every log line.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import math
import os
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from rar.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_file
from rar.config import BRANCH_KEYS, RESUME_FREE, TrainConfig
from rar.io import atomic_open, atomic_write_text
from rar.model import RAR, rar_config
from rar.orders import order_generator, randomness_ratio, sample_orders, scan_order, shuffle
from rar.records import (
    RATE_WINDOW,
    epochs_per_second,
    eta_seconds,
    format_duration,
    stdout_log,
    write_failure,
)
from rar.runtime import DistEnv, resolve_device
from rar.tracking import Tracker, open_tracker, read_history
from rar.validate import (
    HeldOut,
    heldout_dir,
    heldout_orders,
    load_heldout,
    nll_sum,
    sample_grid,
    sampling_order,
    write_png,
)

METRICS_FIELDS = [
    "step", "epoch", "loss", "accuracy", "lr", "ratio", "grad_norm",
    "tokens_per_s", "images_per_s", "elapsed_s",
]  # fmt: skip
# validation.csv: held-out NLL in the run's sampling order (val_loss) and in raster order
# (val_nll, the tables' column), every `val_every` epochs (rar.validate)
VAL_FIELDS = ["step", "epoch", "val_loss", "val_nll", "order"]


# ##########################################################################################
# Data: the interface the loop consumes
# ##########################################################################################


class BatchSource(Protocol):
    """Token batches for one pass ("data epoch") over the entries of a data set.

    `batches(epoch=e, rank=r, world_size=w, batch_size=b)` yields `(tokens (b, N) int64,
    labels (b,) int64)`; every rank yields the same number of batches, and together the
    ranks' i-th batches form the i-th global batch. Deterministic in (epoch, rank, world).
    """

    def batches_per_epoch(self, *, world_size: int, batch_size: int) -> int: ...

    def batches(
        self, *, epoch: int, rank: int, world_size: int, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class TensorBatchSource:
    """A data set held in memory: tokens (M, N) and labels (M,); reshuffled each epoch from
    (seed, epoch). Rank r takes the r-th contiguous slice of each global batch."""

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor, *, seed: int = 0) -> None:
        self.tokens, self.labels, self.seed = tokens, labels, seed

    def batches_per_epoch(self, *, world_size: int, batch_size: int) -> int:
        return len(self.tokens) // (world_size * batch_size)

    def batches(self, *, epoch: int, rank: int, world_size: int, batch_size: int):
        g = torch.Generator().manual_seed(_derive_seed(self.seed, epoch))
        perm = torch.randperm(len(self.tokens), generator=g)
        n = self.batches_per_epoch(world_size=world_size, batch_size=batch_size)
        for idx in perm[: n * world_size * batch_size].view(n, world_size, batch_size)[:, rank]:
            yield self.tokens[idx].long(), self.labels[idx].long()


class ShardBatchSource:
    """Token shards written by `rar tokenize`, read by `rar.data.loader.TokenShards`.

    One data epoch is one pass over the source images (one random crop of each), so data
    epochs and training epochs coincide. Units (chunk x loader worker) split each epoch's
    stream; the tail that does not fill a whole batch on every unit is dropped, so all chunks
    yield the same number of full batches. `workers` is part of the data order.
    """

    def __init__(self, shard_dir: str | Path, *, seed: int, workers: int = 2) -> None:
        from rar.data.loader import TokenShards

        self.dir, self.seed, self.workers = Path(shard_dir), seed, workers
        self._probe = TokenShards(self.dir, batch_size=1, verify="size")
        self.manifest = self._probe.manifest

    def batches_per_epoch(self, *, world_size: int, batch_size: int) -> int:
        from rar.data.loader import TokenShards

        ds = TokenShards(
            self.dir, batch_size=batch_size, world_size=world_size, tail="drop",
            drop_last=True, verify="none",
        )  # fmt: skip
        return ds.batches_per_rank(self.workers)

    def batches(self, *, epoch: int, rank: int, world_size: int, batch_size: int):
        from rar.data.loader import token_loader

        yield from token_loader(
            self.dir, batch_size=batch_size, num_workers=self.workers, seed=self.seed,
            epoch=epoch, rank=rank, world_size=world_size, tail="drop", drop_last=True,
            verify="none",
        )  # fmt: skip


def check_data(cfg: TrainConfig, manifest: dict, where: str) -> None:
    """The shards must be what the run config says it trains on."""
    expected = {
        "num_source_images": cfg.source_images,
        "codebook_size": cfg.codebook_size,
        "num_classes": cfg.num_classes,
        "tokens_per_sample": cfg.num_tokens,
    }
    found = {
        "num_source_images": manifest.get("num_source_images"),
        "codebook_size": manifest.get("tokenizer", {}).get("codebook_size"),
        "num_classes": manifest.get("num_classes"),
        "tokens_per_sample": manifest.get("tokens_per_sample"),
    }
    wrong = [f"{k} {found[k]} (config: {v})" for k, v in expected.items() if found[k] != v]
    if wrong:
        raise ValueError(f"{where}: the shards do not match the run config: {'; '.join(wrong)}")


def stream_from(
    source: BatchSource, *, start_step: int, rank: int, world_size: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches for one chunk of every global batch, starting at optimizer step
    `start_step`: whole data epochs are skipped by arithmetic, the rest by reading."""
    per_epoch = source.batches_per_epoch(world_size=world_size, batch_size=batch_size)
    if per_epoch == 0:
        raise ValueError(
            f"the data set holds less than one global batch ({world_size} x {batch_size})"
        )
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        for i, batch in enumerate(
            source.batches(epoch=epoch, rank=rank, world_size=world_size, batch_size=batch_size)
        ):
            if i >= skip:
                yield batch
        epoch, skip = epoch + 1, 0


# ##########################################################################################
# Recipe: optimizer, schedule, loss
# ##########################################################################################


def _derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, well mixed (numpy's SeedSequence)."""
    state = np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


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
        # One fused kernel per step on GPUs; the CPU keeps the default (bit-exact tests).
        fused=bool(decay) and decay[0].is_cuda,
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
    with torch.autocast(tokens.device.type, dtype=amp, enabled=amp is not None):
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


# ##########################################################################################
# Checkpoints
# ##########################################################################################


@functools.cache
def code_version() -> str:
    """The git commit of the code that wrote a checkpoint (plus "-dirty"), if known."""
    try:
        root = Path(__file__).resolve().parents[1]
        sha = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        return sha or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_checkpoint(path: Path, **state) -> None:
    """Atomically (rar.io): a killed job never leaves a checkpoint that looks complete."""
    with atomic_open(path) as f:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, f)


# `last.pt` keeps its predecessor until the new one is complete (`save_last`).
LAST, LAST_PREV, LAST_NEXT = "last.pt", "last.prev.pt", "last.next.pt"


def save_last(path: Path, **state) -> None:
    """Write `path` (`last.pt`) keeping the previous one as `last.prev.pt`: write
    `last.next.pt` (atomically, fsynced), rename last -> prev, rename next -> last. A crash
    at any point leaves complete files only (between the renames: prev and next), and a
    last.pt that is bad anyway (a disk that lied, a bad copy) still has prev behind it
    (`find_resume_point`)."""
    staged, prev = path.with_name(LAST_NEXT), path.with_name(LAST_PREV)
    save_checkpoint(staged, **state)
    if path.exists():
        os.replace(path, prev)
    os.replace(staged, path)
    with contextlib.suppress(OSError):  # persist the renames (best effort, as rar.io)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint of this pipeline; CheckpointError (a ValueError) naming the file
    when it is missing, truncated, unsafe or something else (rar.checkpoint)."""
    what = f"a training checkpoint of this pipeline ({CHECKPOINT_FORMAT})"
    ckpt = load_file(path, what=what)
    if ckpt.get("format") != CHECKPOINT_FORMAT or not {"model", "step"} <= ckpt.keys():
        raise CheckpointError(f"{path}: not {what} (format {ckpt.get('format')!r})")
    return ckpt


@dataclass(frozen=True)
class ResumePoint:
    path: Path  # the checkpoint to resume from
    ckpt: dict
    failed: tuple[tuple[Path, str], ...]  # this run's checkpoints that did not load, and why


def find_resume_point(ckpt_dir: Path) -> ResumePoint | None:
    """The newest of this run's own checkpoints that loads; None when it has none at all.

    `last.pt` first (the normal case: one load). When it is missing or does not load, the
    highest step among `last.next.pt` (complete, not yet renamed), `last.prev.pt` and the
    newest `epoch_*.pt` that loads. Raises CheckpointError listing every file and why it
    failed when checkpoints exist but none of them loads: a run is only ever started from
    scratch when it has no checkpoint at all.
    """
    last = ckpt_dir / LAST
    failed: list[tuple[Path, str]] = []
    if last.exists():
        try:
            return ResumePoint(last, load_checkpoint(last), ())
        except CheckpointError as err:
            failed.append((last, str(err)))
    named = sorted(ckpt_dir.glob("epoch_*.pt"), key=_epoch_of_name, reverse=True)
    best: tuple[Path, dict] | None = None
    for path in [ckpt_dir / LAST_NEXT, ckpt_dir / LAST_PREV, *named]:
        if not path.exists():
            continue
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as err:
            failed.append((path, str(err)))
            continue
        if best is None or ckpt["step"] > best[1]["step"]:
            best = path, ckpt
        if path in named:
            break  # older epoch files hold earlier steps
    if best is None and failed:
        listing = "\n".join(f"  {p.name}: {why}" for p, why in failed)
        raise CheckpointError(
            f"{ckpt_dir}: none of this run's checkpoints loads, so it can neither resume nor "
            f"start again without losing them:\n{listing}\nNothing was changed; move the "
            "folder away to train the run from scratch."
        )
    return ResumePoint(best[0], best[1], tuple(failed)) if best else None


def _epoch_of_name(path: Path) -> float:
    try:
        return float(path.name[len("epoch_") : -len(".pt")])
    except ValueError:
        return -math.inf


def _set_aside(point: ResumePoint, metrics_csv: Path) -> None:
    """After a resume from anything but a good `last.pt`: rename the files that did not load
    to `<name>.corrupt-<UTC time>` (kept for inspection, and out of the way of the next
    `save_last`, which would otherwise overwrite `last.prev.pt` with a bad `last.pt`), and say
    what was used and what is trained again."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for path, why in point.failed:
        kept = path.with_name(f"{path.name}.corrupt-{stamp}")
        n = 1
        while kept.exists():
            n += 1
            kept = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        os.replace(path, kept)
        print(f"WARNING: {why}; kept as {kept}", flush=True)
    step = point.ckpt["step"]
    reached = _last_logged_step(metrics_csv)
    lost = (
        f"metrics.csv had reached step {reached}, so at least {reached - step} steps are "
        "trained again"
        if reached is not None and reached > step
        else "how many steps the lost checkpoint held is unknown"
    )
    why = "does not load" if point.failed and point.failed[0][0].name == LAST else "is missing"
    print(
        f"WARNING: {point.path.parent / LAST} {why}; resuming from {point.path} at step "
        f"{step} instead: {lost}",
        flush=True,
    )


def _last_logged_step(metrics_csv: Path) -> int | None:
    try:
        with metrics_csv.open() as f:
            steps = [int(r["step"]) for r in csv.DictReader(f)]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return max(steps, default=None)


def _config_differences(a: TrainConfig, b: TrainConfig) -> set[str]:
    return {f.name for f in fields(TrainConfig) if getattr(a, f.name) != getattr(b, f.name)}


def _check_compatible(cfg: TrainConfig, ckpt: dict, path: Path, *, branch: bool) -> None:
    """A resume must continue the same run; a branch may change only BRANCH_KEYS, and only
    from a step at or before its own anneal start (where the trunk's r = 1 still holds)."""
    try:
        saved = TrainConfig.from_dict(ckpt["config"], source=str(path))
    except ValueError as err:
        raise ValueError(f"{path}: its config does not load: {err}") from err
    allowed = (BRANCH_KEYS if branch else frozenset()) | RESUME_FREE
    changed = _config_differences(cfg, saved) - allowed
    if changed:
        detail = ", ".join(
            f"{k}: {getattr(saved, k)!r} -> {getattr(cfg, k)!r}" for k in sorted(changed)
        )
        what = "branch from" if branch else "resume"
        raise ValueError(
            f"cannot {what} {path}: settings differ ({detail}); a checkpoint of a different "
            "model size, codebook, grid or recipe is a different run"
        )
    if branch and ckpt["step"] > cfg.step_at(min(cfg.anneal_start, saved.anneal_start)):
        raise ValueError(
            f"cannot branch from {path} at step {ckpt['step']} (epoch "
            f"{cfg.epoch_at(ckpt['step']):g}): it is past this run's anneal start "
            f"{cfg.anneal_start:g} (step {cfg.step_at(cfg.anneal_start)})"
        )


# ##########################################################################################
# The loop
# ##########################################################################################


class MetricsLog:
    """metrics.csv (or validation.csv: `fields`) in the run directory; rows past a resumed
    step are dropped first, so the file always describes the run that the checkpoints hold."""

    def __init__(self, path: Path, resume_step: int, fields: list[str] = METRICS_FIELDS) -> None:
        self.path, self.fields = path, fields
        rows = []
        if path.exists():
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        lines = [",".join(fields)] + [",".join(str(r[k]) for k in fields) for r in rows]
        atomic_write_text(path, "\n".join(lines) + "\n")

    def write(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(",".join(_fmt(row[k]) for k in self.fields) + "\n")


# ##########################################################################################
# Watching the run: trackers, validation, sample grids (rar.tracking, rar.validate)
# ##########################################################################################


def steps_every(cfg: TrainConfig, interval: float) -> set[int]:
    """The optimizer steps at every `interval` epochs, and the run's last step; none for 0."""
    if interval <= 0:
        return set()
    count = math.floor(round(cfg.epochs / interval, 6))
    return {cfg.step_at(k * interval) for k in range(1, count + 1)} - {0} | {cfg.total_steps}


def _history(workdir: Path, step: int, init_from: str | Path | None) -> list[tuple[int, dict]]:
    """What a run's curve holds up to `step`: its own logs, and a branch's beginning from its
    trunk's (the run directory of the `init_from` checkpoint), up to the branch point."""
    own = read_history(workdir, step)
    rows: dict[int, dict] = {}
    if init_from is not None:
        branch_point = own[0][0] - 1 if own else step  # a branch logs from its point on
        trunk = Path(init_from).resolve().parent.parent
        if trunk != workdir.resolve():  # a trunk's next segment continues its own logs
            rows.update(read_history(trunk, branch_point))
    rows.update(own)
    return sorted(rows.items())


class Watcher:
    """A run's view for people, beside metrics.csv: trackers (rank 0), the held-out NLL every
    `val_every` epochs (shared by the ranks, added up), the sample grid every `sample_every`
    epochs (rank 0). None of it changes the weights (it runs with dropout off and draws from
    its own generators; each step re-seeds the training's draws), and none of it stops the
    run: a part that cannot work says once why it is off."""

    def __init__(
        self,
        cfg: TrainConfig,
        workdir: Path,
        *,
        model: RAR,
        env: DistEnv,
        device: torch.device,
        amp: torch.dtype | None,
        step: int,
        own_checkpoint: bool,
        init_from: str | Path | None,
        heldout: HeldOut | str | None,
        tokenizer,
        batch_size: int,
    ) -> None:
        self.cfg, self.workdir, self.model, self.env, self.device, self.amp = (
            cfg, workdir, model, env, device, amp,
        )  # fmt: skip
        self.batch_size, self.main = batch_size, env.rank == 0
        self.tracker = Tracker()
        if self.main:
            self.tracker = open_tracker(
                cfg, workdir, run_id=cfg.run_id(), resume_step=step,
                own_checkpoint=own_checkpoint, history=lambda: _history(workdir, step, init_from),
                say=self.say,
            )  # fmt: skip
        self.val_steps: set[int] = set()
        validating = cfg.val_every > 0 and isinstance(heldout, HeldOut)
        if self.main and (validating or (workdir / "validation.csv").exists()):
            # its rows past the resume step go, as metrics.csv's (validation on or not)
            self.val_log = MetricsLog(workdir / "validation.csv", step, VAL_FIELDS)
        if validating:
            self._setup_validation(heldout)
        elif cfg.val_every > 0:
            self.say(f"validation is off: {heldout or 'no held-out tokens were given'}")
        self.sample_steps: set[int] = set()
        if cfg.sample_every > 0 and self.main:
            if tokenizer is not None and not isinstance(tokenizer, str):
                self.tokenizer = tokenizer.to(device)
                self.sample_steps = steps_every(cfg, cfg.sample_every)
            else:
                self.say(f"sample grids are off: {tokenizer or 'no tokenizer was given'}")
        self.recent: deque[tuple[float, float]] = deque(maxlen=RATE_WINDOW)

    def say(self, message: str) -> None:
        if self.main:
            print(message, flush=True)

    # -- validation ---------------------------------------------------------------------

    def _setup_validation(self, heldout: HeldOut) -> None:
        cfg, grid = self.cfg, self.model.config.grid
        self.order = sampling_order(cfg.anneal_start, cfg.epochs, cfg.target_order)
        mine = slice(self.env.rank, None, self.env.world_size)  # this rank's share
        n = len(heldout.tokens)
        self.val = (
            heldout.tokens[mine], heldout.labels[mine],
            heldout_orders(self.order, n, grid, seed=cfg.seed)[mine],
            heldout_orders("row-major", n, grid, seed=cfg.seed)[mine],
        )  # fmt: skip
        self.val_steps = steps_every(cfg, cfg.val_every)
        if self.main:
            self.say(
                f"validation: {n} held-out samples of {heldout.directory} every "
                f"{cfg.val_every:g} epochs, in {self.order} order (val_loss) and raster (val_nll)"
            )

    def validate(self, step: int) -> None:
        tokens, labels, orders, raster = self.val
        kw = dict(batch_size=self.batch_size, amp=self.amp)
        own, count = nll_sum(self.model, tokens, labels, orders, **kw)
        flat, _ = nll_sum(self.model, tokens, labels, raster, **kw)
        sums = torch.tensor([own, flat, count], dtype=torch.float64, device=self.device)
        if self.env.world_size > 1:
            dist.all_reduce(sums)
        own, flat, count = sums.tolist()
        if self.main:
            row = dict(
                step=step, epoch=self.cfg.epoch_at(step), val_loss=own / count,
                val_nll=flat / count, order=self.order,
            )  # fmt: skip
            self.val_log.write(row)
            self.tracker.scalars(step, {"val_loss": row["val_loss"], "val_nll": row["val_nll"]})
            print(
                f"step {step} validation: loss {row['val_loss']:.4f} ({self.order}) "
                f"nll {row['val_nll']:.4f} (raster)",
                flush=True,
            )

    # -- sample grids -------------------------------------------------------------------

    def sample(self, step: int) -> None:
        cfg = self.cfg
        image = sample_grid(
            self.model, self.tokenizer, num_classes=cfg.num_classes,
            order=sampling_order(cfg.anneal_start, cfg.epochs, cfg.target_order),
            seed=cfg.seed, amp=self.amp,
        )  # fmt: skip
        write_png(self.workdir / "samples" / f"step_{step:08d}.png", image)
        self.tracker.image(step, "samples", image)

    # -- the loop's calls ---------------------------------------------------------------

    def after_step(self, step: int) -> float:
        """Validate and sample when due; returns the seconds it took (not training time)."""
        t0 = time.perf_counter()
        if step in self.val_steps:
            try:
                self.validate(step)
            except Exception as err:  # never stop training for a view of it
                self.val_steps = set()
                self.say(f"validation is off from step {step}: {type(err).__name__}: {err}")
        if step in self.sample_steps:
            (self.workdir / "samples").mkdir(exist_ok=True)
            try:
                self.sample(step)
            except Exception as err:
                self.sample_steps = set()
                self.say(f"sample grids are off from step {step}: {type(err).__name__}: {err}")
        return time.perf_counter() - t0

    def log_line(self, row: dict) -> str:
        """The trackers get the row; returns the ETA of the run (rar.status's formula)."""
        self.tracker.scalars(
            row["step"], {k: v for k, v in row.items() if k not in ("step", "elapsed_s")}
        )
        self.recent.append((row["epoch"], row["elapsed_s"]))
        rate = epochs_per_second(list(self.recent))
        return format_duration(eta_seconds(row["epoch"], self.cfg.epochs, rate))

    def close(self) -> None:
        self.tracker.close()


def _fmt(x) -> str:
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def _resolve_precision(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool, device: torch.device) -> Iterator[None]:
    """`torch.use_deterministic_algorithms(True)` for the duration, then the caller's setting.

    CPU (always on): the backward of the positional tables' advanced indexing
    (`pos_embed[0, PREFIX + at]` in rar.model) is an index_put with accumulate, which
    PyTorch runs as a multi-threaded scatter of atomic adds once it exceeds one parallel grain
    (32,768 elements: e.g. rar_mini at 32 x 15 x 128); its summation order, and so the last bits
    of the gradient, then changes from run to run. Deterministic mode runs that scatter
    serially. Measured cost (2-core CPU, median and minimum of 60 steps): 0-4 % per step for
    rar_tiny at micro-batch 4 and rar_mini at 32 and 64, within the machine's noise.
    GPU (`deterministic: true`): deterministic kernels throughout, and cuBLAS with a fixed
    workspace (`CUBLAS_WORKSPACE_CONFIG=:4096:8`, which cuBLAS reads at its first call, so it
    is set here, before the model exists; a process that ran cuBLAS earlier must export it
    itself). Cost unmeasured here: PyTorch's reproducibility notes say "deterministic
    operations are often slower than nondeterministic operations"
    (https://pytorch.org/docs/stable/notes/randomness.html). An operation without a
    deterministic implementation raises RuntimeError instead of running.
    On a CPU with one intra-op thread nothing runs in parallel, so the mode is not switched
    on: switching it imports torch._inductor, 2.7 s of every one-thread job (the demo's).
    """
    if not enabled or (device.type == "cpu" and torch.get_num_threads() == 1):
        yield
        return
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


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
    (`deterministic_algorithms`); the caller's setting is restored on return.
    """
    device = resolve_device(device, DistEnv.from_environ().local_rank)
    with deterministic_algorithms(device.type == "cpu" or cfg.deterministic, device):
        return _train(
            cfg, workdir, source=source, init_from=init_from, device=device,
            should_stop=should_stop, max_steps=max_steps, until_epoch=until_epoch,
            heldout=heldout, tokenizer=tokenizer,
        )  # fmt: skip


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
) -> Path:
    workdir = Path(workdir)
    ckpt_dir = workdir / "checkpoints"
    final = ckpt_dir / "final.pt"
    segment_end = None
    if until_epoch is not None and cfg.step_at(until_epoch) < cfg.total_steps:
        segment_end = ckpt_dir / f"epoch_{until_epoch:g}.pt"
        if segment_end.exists():
            return segment_end
    if final.exists() and segment_end is None:
        return final
    if final.exists():
        raise ValueError(f"{workdir} is finished, and its checkpoint {segment_end} is gone")
    env = DistEnv.from_environ()
    device = resolve_device(device, env.local_rank)
    if device.type == "cuda":  # TF32 for what runs outside bf16 autocast (entry point only)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if env.world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    is_main = env.rank == 0

    micro = cfg.micro_batch or cfg.global_batch // env.world_size
    if cfg.global_batch % (micro * env.world_size):
        raise ValueError(
            f"global_batch {cfg.global_batch} is not a multiple of micro_batch {micro} x "
            f"{env.world_size} processes"
        )
    accum = cfg.global_batch // (micro * env.world_size)
    chunks = env.world_size * accum  # micro-batches per global batch, over all ranks

    torch.manual_seed(cfg.seed)  # the initial weights; every later draw is seeded per step
    model = model_from_config(cfg).to(device)
    optimizer = build_optimizer(model, cfg)
    step = 0
    last = ckpt_dir / LAST
    # This run's own newest checkpoint that loads (last.pt, else its predecessors); a branch
    # starts from `init_from` only when the run has no checkpoint at all.
    point = find_resume_point(ckpt_dir)
    resume_from, ckpt, branch = (point.path, point.ckpt, False) if point else (None, None, False)
    if point is None and init_from:
        resume_from, branch = Path(init_from), True
        ckpt = load_checkpoint(resume_from)
    if resume_from is not None:
        _check_compatible(cfg, ckpt, resume_from, branch=branch)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        if is_main:
            what = "branching" if branch else "resuming"
            print(f"{what} from {resume_from} at step {step}", flush=True)
    if point is not None and point.path != last:
        if env.world_size > 1:
            dist.barrier()  # every rank has read the files before any is renamed
        if is_main:
            _set_aside(point, workdir / "metrics.csv")
    own_checkpoint = point is not None
    del ckpt, point  # a checkpoint's tensors are not needed past this point
    # The workflow writes this file first (the run's identity): leave it and its mtime alone,
    # also when --settings changed what lies outside the identity (a rewrite would make
    # Snakemake retrain); a resume of another run was refused above.
    if is_main and not (workdir / "config.yaml").exists():
        cfg.save(workdir / "config.yaml")
    metrics = MetricsLog(workdir / "metrics.csv", step) if is_main else None

    ddp = model
    if env.world_size > 1:
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        ddp = torch.compile(ddp)
    amp = _resolve_precision(cfg, device)
    target = scan_order(cfg.target_order, model.config.grid)
    named_steps = {cfg.step_at(e): e for e in cfg.checkpoint_epochs}
    stop_step = cfg.total_steps
    if segment_end is not None:
        stop_step = cfg.step_at(until_epoch)
        named_steps[stop_step] = until_epoch
        if step > stop_step:
            raise ValueError(
                f"{last} is at step {step}, past epoch {until_epoch:g} (step {stop_step}), "
                f"and {segment_end} is missing: retrain the run to re-create it"
            )
    streams = [
        stream_from(
            source, start_step=step, rank=env.rank * accum + a, world_size=chunks, batch_size=micro
        )
        for a in range(accum)
    ]
    watch = Watcher(
        cfg, workdir, model=model, env=env, device=device, amp=amp, step=step,
        own_checkpoint=own_checkpoint, init_from=init_from, heldout=heldout,
        tokenizer=tokenizer, batch_size=micro,
    )  # fmt: skip
    try:
        return _loop(
            cfg, workdir, model=model, ddp=ddp, optimizer=optimizer, env=env, device=device,
            amp=amp, target=target, streams=streams, step=step, stop_step=stop_step,
            named_steps=named_steps, segment_end=segment_end, accum=accum, watch=watch,
            metrics=metrics, should_stop=should_stop, max_steps=max_steps,
        )  # fmt: skip
    finally:
        watch.close()


def _loop(
    cfg: TrainConfig,
    workdir: Path,
    *,
    model: RAR,
    ddp: nn.Module,
    optimizer: torch.optim.Optimizer,
    env: DistEnv,
    device: torch.device,
    amp: torch.dtype | None,
    target: torch.Tensor,
    streams: list[Iterator[tuple[torch.Tensor, torch.Tensor]]],
    step: int,
    stop_step: int,
    named_steps: dict[int, float],
    segment_end: Path | None,
    accum: int,
    watch: Watcher,
    metrics: MetricsLog | None,
    should_stop: Callable[[], bool],
    max_steps: int | None,
) -> Path:
    """The optimizer steps from `step` to `stop_step`, with logs, checkpoints and the watcher;
    returns the checkpoint it ends with (`_train` sets everything up)."""
    is_main = env.rank == 0
    ckpt_dir = workdir / "checkpoints"
    last, final = ckpt_dir / LAST, ckpt_dir / "final.pt"

    def save(path: Path, *, may_fail: bool = False) -> None:
        """may_fail: a periodic `last.pt` that cannot be written (disk full) is reported and
        the run goes on; the previous one stays valid, and the next interval tries again."""
        if is_main:
            state = dict(
                model=model.state_dict(),
                optimizer=optimizer.state_dict(),
                step=step,
                epoch=cfg.epoch_at(step),
                config=cfg.to_dict(),
                model_config=model.config.__dict__,
                code_version=code_version(),
            )
            try:
                (save_last if path == last else save_checkpoint)(path, **state)
            except OSError as err:
                if not may_fail:
                    raise
                print(f"WARNING: could not write {path} at step {step} ({err})", flush=True)
        if env.world_size > 1:
            dist.barrier()

    model.train()
    start_step, t_start = step, time.perf_counter()
    t_last_ckpt, t_log, tokens_since_log = time.monotonic(), time.perf_counter(), 0
    while step < stop_step:
        lr = learning_rate(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        ratio = randomness_ratio(cfg.epoch_at(step), cfg.anneal_start, cfg.anneal_end)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        for a in range(accum):
            chunk = env.rank * accum + a
            tokens, labels = next(streams[a])
            g = order_generator(cfg.seed, step, chunk)
            drop = torch.rand(labels.shape, generator=g) < cfg.class_dropout
            labels = torch.where(drop, model.config.null_class, labels)
            orders = sample_orders(len(tokens), cfg.num_tokens, ratio, target, g)
            tokens, labels, orders = tokens.to(device), labels.to(device), orders.to(device)
            torch.manual_seed(_derive_seed(cfg.seed, step, chunk, 1))  # dropout masks
            sync = a == accum - 1 or env.world_size == 1
            ctx = ddp.no_sync() if not sync else contextlib.nullcontext()
            with ctx:
                loss, accuracy = loss_and_accuracy(ddp, tokens, labels, orders, amp=amp)
                (loss / accum).backward()
            loss_sum += loss.detach() / accum
            correct += accuracy / accum
        if env.world_size > 1:
            stats = torch.stack([loss_sum, correct])
            dist.all_reduce(stats)
            loss_sum, correct = stats / env.world_size
        if not torch.isfinite(loss_sum):
            raise FloatingPointError(
                f"non-finite loss ({loss_sum.item()}) at step {step} (epoch "
                f"{cfg.epoch_at(step):.3f}); the last good checkpoint is {last}"
            )
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_since_log += cfg.global_batch * cfg.num_tokens

        if metrics is not None and (step % cfg.log_every == 0 or step == cfg.total_steps):
            now = time.perf_counter()
            rate = tokens_since_log / max(now - t_log, 1e-9)
            row = dict(
                step=step, epoch=cfg.epoch_at(step), loss=loss_sum.item(),
                accuracy=correct.item(), lr=lr, ratio=ratio, grad_norm=grad_norm.item(),
                tokens_per_s=rate, images_per_s=rate / cfg.num_tokens,
                elapsed_s=now - t_start,
            )  # fmt: skip
            metrics.write(row)
            eta = watch.log_line(row)
            print(
                f"step {step}/{cfg.total_steps} epoch {row['epoch']:.2f} loss {row['loss']:.4f} "
                f"acc {row['accuracy']:.3f} lr {lr:.3g} r {ratio:.3f} "
                f"{row['images_per_s']:.1f} img/s eta {eta}",
                flush=True,
            )
            t_log, tokens_since_log = now, 0
        t_log += watch.after_step(step)  # the throughput counts training time only
        if step in named_steps:
            save(ckpt_dir / f"epoch_{named_steps[step]:g}.pt")
        stop = should_stop() or (max_steps is not None and step - start_step >= max_steps)
        if env.world_size > 1:  # SLURM signals every task, but all must stop at one step
            flag = torch.tensor(float(stop), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        due = time.monotonic() - t_last_ckpt >= cfg.checkpoint_minutes * 60
        if (due or stop) and step < cfg.total_steps:
            save(last, may_fail=not stop)
            t_last_ckpt = time.monotonic()
        if stop and step < cfg.total_steps:
            return last
    if segment_end is not None:  # a trunk segment: keep last.pt for the next segment
        if not segment_end.exists():  # resumed exactly at the boundary
            save(segment_end)
        save(last)
        return segment_end
    save(final)
    if is_main:
        for name in (LAST, LAST_PREV, LAST_NEXT):
            (ckpt_dir / name).unlink(missing_ok=True)
    return final


def find_heldout(cfg: TrainConfig, manifest: dict) -> HeldOut | str:
    """The run's held-out tokens (`cfg.val_data`, else `<data>/val`), or why there are none."""
    directory = heldout_dir(cfg.data, cfg.val_data)
    if directory is None or not (directory / "manifest.json").exists():
        return (
            f"no held-out tokens at {directory} (make them with `rar tokenize --images "
            f"<held-out images> --out {directory} --tokenizer <the data's> --crop center`; "
            'README "Watching a grid")'
        )
    try:
        heldout = load_heldout(directory)
    except (OSError, ValueError, KeyError) as err:
        return f"the held-out tokens at {directory} do not load ({err})"
    if list(heldout.classes) != list(manifest.get("classes", heldout.classes)):
        return f"{directory} has other classes than the training shards {cfg.data}"
    if heldout.tokens.shape[1] != cfg.num_tokens or heldout.tokens.max() >= cfg.codebook_size:
        return (
            f"{directory} holds other tokens than this run's ({cfg.num_tokens} per sample, "
            f"codebook {cfg.codebook_size})"
        )
    return heldout


def find_tokenizer(manifest: dict):
    """The tokenizer the shards were made with (their manifest's file, checked by identity),
    for decoding sample grids; or why there is none."""
    path = (manifest.get("tokenize") or {}).get("tokenizer_path")
    if not path or not Path(path).exists():
        return f"the shards' tokenizer file {path!r} is not here to decode samples with"
    from rar.tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer(path)
    except (OSError, ValueError) as err:
        return f"the shards' tokenizer {path} does not load ({err})"
    if tokenizer.identity() != manifest.get("tokenizer", {}).get("identity"):
        return f"{path} is not the tokenizer the shards were made with (its weights differ)"
    return tokenizer


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
