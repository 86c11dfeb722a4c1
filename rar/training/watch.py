"""Watching a run, for people, without touching its weights: metrics.csv and validation.csv
(`rar.experiments.records.MetricsLog`), the log lines every `log_every` steps (`StepLog`), and the
`Watcher` beside the loop: TensorBoard / W&B (rar.training.tracking), the held-out NLL and sample
grids (rar.evaluation.heldout), and the ETA of every log line; `find_heldout` and `find_tokenizer`
find what it needs, or say why it is off.

Apart from rar.training.loop because none of it changes what a run computes: the loop calls
`Watcher.after_step` and `Watcher.log_line`, and that is all it knows of it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from rar.evaluation.heldout import (
    HeldOut,
    heldout_dir,
    heldout_orders,
    load_heldout,
    nll_sum,
    sample_grid,
    sampling_order,
    write_png,
)
from rar.experiments.records import (
    RATE_WINDOW,
    VAL_FIELDS,
    VALIDATION_CSV,
    MetricsLog,
    epochs_per_second,
    eta_seconds,
    format_duration,
)
from rar.model.transformer import RAR
from rar.runtime import DistEnv
from rar.settings.training import TrainConfig
from rar.training.tracking import Tracker, open_tracker, read_history

# ##########################################################################################
# Watching the run: trackers, validation, sample grids (rar.training.tracking,
# rar.evaluation.heldout)
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
            cfg,
            workdir,
            model,
            env,
            device,
            amp,
        )
        self.batch_size, self.main = batch_size, env.rank == 0
        self.tracker = Tracker()
        if self.main:
            self.tracker = open_tracker(
                cfg,
                workdir,
                run_id=cfg.run_id(),
                resume_step=step,
                own_checkpoint=own_checkpoint,
                history=lambda: _history(workdir, step, init_from),
                say=self.say,
            )
        self.val_steps: set[int] = set()
        validating = cfg.val_every > 0 and isinstance(heldout, HeldOut)
        if self.main and (validating or (workdir / VALIDATION_CSV).exists()):
            # its rows past the resume step go, as metrics.csv's (validation on or not)
            self.val_log = MetricsLog(workdir / VALIDATION_CSV, step, VAL_FIELDS)
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
            heldout.tokens[mine],
            heldout.labels[mine],
            heldout_orders(self.order, n, grid, seed=cfg.seed)[mine],
            heldout_orders("row-major", n, grid, seed=cfg.seed)[mine],
        )
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
                step=step,
                epoch=self.cfg.epoch_at(step),
                val_loss=own / count,
                val_nll=flat / count,
                order=self.order,
            )
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
            self.model,
            self.tokenizer,
            num_classes=cfg.num_classes,
            order=sampling_order(cfg.anneal_start, cfg.epochs, cfg.target_order),
            seed=cfg.seed,
            amp=self.amp,
        )
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
        """The trackers get the row; returns the ETA of the run (rar.ops.status's formula)."""
        self.tracker.scalars(
            row["step"], {k: v for k, v in row.items() if k not in ("step", "elapsed_s")}
        )
        self.recent.append((row["epoch"], row["elapsed_s"]))
        rate = epochs_per_second(list(self.recent))
        return format_duration(eta_seconds(row["epoch"], self.cfg.epochs, rate))

    def close(self) -> None:
        self.tracker.close()


# ##########################################################################################
# What the watcher needs
# ##########################################################################################


def find_heldout(cfg: TrainConfig, manifest: dict) -> HeldOut | str:
    """The run's held-out tokens (`cfg.val_data`, else `<data>/val`), or why there are none."""
    directory = heldout_dir(cfg.data, cfg.val_data)
    if directory is None or not (directory / "manifest.json").exists():
        return (
            f"no held-out tokens at {directory} (make them with `rar tokenize --images "
            f"<held-out images> --out {directory} --tokenizer <the data's> --crop center`; "
            'docs/operating.md "Watching a grid")'
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
    from rar.model.tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer(path)
    except (OSError, ValueError) as err:
        return f"the shards' tokenizer {path} does not load ({err})"
    if tokenizer.identity() != manifest.get("tokenizer", {}).get("identity"):
        return f"{path} is not the tokenizer the shards were made with (its weights differ)"
    return tokenizer


class StepLog:
    """metrics.csv, the trackers and the printed line every `log_every` steps (and at the
    end), with the throughput of training time only: the watcher's time is left out."""

    def __init__(
        self,
        cfg: TrainConfig,
        metrics: MetricsLog | None,
        watch: Watcher,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.cfg, self.metrics, self.watch, self.clock = cfg, metrics, watch, clock
        self.t_start = self.t_log = clock()
        self.tokens_since_log = 0

    def due(self, step: int) -> bool:
        """Whether step `step` is logged (the device is read then: a host synchronisation)."""
        return step % self.cfg.log_every == 0 or step == self.cfg.total_steps

    def after(self, step: int, stats: dict) -> None:
        """After optimizer step `step` - 1 -> `step`: log when due, then let the watcher run."""
        cfg = self.cfg
        self.tokens_since_log += cfg.global_batch * cfg.num_tokens
        if self.metrics is not None and self.due(step):
            now = self.clock()
            rate = self.tokens_since_log / max(now - self.t_log, 1e-9)
            row = dict(
                step=step,
                epoch=cfg.epoch_at(step),
                loss=stats["loss"].item(),
                accuracy=stats["accuracy"].item(),
                lr=stats["lr"],
                ratio=stats["ratio"],
                grad_norm=stats["grad_norm"].item(),
                tokens_per_s=rate,
                images_per_s=rate / cfg.num_tokens,
                elapsed_s=now - self.t_start,
            )
            self.metrics.write(row)
            eta = self.watch.log_line(row)
            print(
                f"step {step}/{cfg.total_steps} epoch {row['epoch']:.2f} loss {row['loss']:.4f} "
                f"acc {row['accuracy']:.3f} lr {row['lr']:.3g} r {row['ratio']:.3f} "
                f"{row['images_per_s']:.1f} img/s eta {eta}",
                flush=True,
            )
            self.t_log, self.tokens_since_log = now, 0
        self.t_log += self.watch.after_step(step)  # the throughput counts training time only
