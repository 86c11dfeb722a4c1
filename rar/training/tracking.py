"""Experiment trackers: a run's curves and sample grids in TensorBoard and Weights & Biases.

metrics.csv stays the record (rar.ops.status and rar.report read it); the trackers are views for
people, and optional: `tensorboard` and `wandb` are the `logging` extra (the pipeline installs
TensorBoard). A tracker never stops training: a missing package, no network or an error while
logging says once what is off and why, and the run goes on.

One run is one TensorBoard run (`<log_dir>/<run name>/`) and one W&B run (id = the run id, so
a requeued job continues it; group = the study), named `run_name`: the settings that tell a
table's rows apart, then the run id. Curves never fork or repeat a step:

- a resumed job purges, in TensorBoard, the steps past its checkpoint (SummaryWriter's
  `purge_step`, which TensorBoard's reader applies), and skips, in W&B, the steps W&B already
  holds (W&B keeps the first value of a step; our resume is bit-exact, so they are the same);
- a run started without a checkpoint of its own drops the TensorBoard files of earlier
  attempts first;
- a tracker that holds nothing of the run yet (a branch's first job, or one switched on
  mid-run) first replays `history`: the rows of metrics.csv and validation.csv up to the
  resume step, a branch's beginning taken from its trunk's files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from rar.experiments.records import METRICS_CSV, VALIDATION_CSV, log_rows
from rar.settings.training import TrainConfig

EVENTS_GLOB = "events.out.tfevents.*"
# metrics.csv / validation.csv columns -> tracker tags (one axis: the optimizer step).
TAGS = {
    "loss": "train/loss",
    "accuracy": "train/accuracy",
    "lr": "train/lr",
    "ratio": "train/r",
    "grad_norm": "train/grad_norm",
    "epoch": "train/epoch",
    "tokens_per_s": "perf/tokens_per_s",
    "images_per_s": "perf/images_per_s",
    "val_loss": "val/loss",
    "val_nll": "val/nll",
}


def run_name(cfg: TrainConfig, run_id: str) -> str:
    """`<model>_<architecture>_anneal<start>-<end>_<target order>_<run id>`: the keys that tell
    the paper's table rows apart, then the identity. Safe as a folder name."""
    return (
        f"{cfg.model}_{cfg.architecture}_anneal{cfg.anneal_start:g}-{cfg.anneal_end:g}_"
        f"{cfg.target_order}_{run_id}"
    )


def run_tags(cfg: TrainConfig) -> list[str]:
    """W&B tags: a run's table coordinates (model, architecture, anneal, scan order)."""
    anneal = f"anneal {cfg.anneal_start:g}-{cfg.anneal_end:g}"
    return [cfg.model, cfg.architecture, anneal, cfg.target_order]


def tensorboard_dir(cfg: TrainConfig, workdir: str | os.PathLike, name: str) -> Path:
    return Path(cfg.log_dir or Path(workdir) / "tb") / name


def read_history(run_dir: str | os.PathLike, upto_step: int) -> list[tuple[int, dict]]:
    """(step, {column: value}) rows of a run's metrics.csv and validation.csv up to a step,
    in step order; rows that do not parse (a torn last line) are skipped."""
    rows: dict[int, dict] = {}
    for name in (METRICS_CSV, VALIDATION_CSV):
        for r in log_rows(Path(run_dir) / name):
            with contextlib.suppress(TypeError, ValueError, KeyError):
                step = int(r["step"])
                values = {k: float(v) for k, v in r.items() if k in TAGS and v not in ("", None)}
                if step <= upto_step:
                    rows.setdefault(step, {}).update(values)
    return sorted(rows.items())


# ##########################################################################################
# Backends
# ##########################################################################################


class _TensorBoard:
    name = "TensorBoard"

    def __init__(self, folder: Path, *, resume_step: int, own_checkpoint: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter  # ImportError without tensorboard

        folder.mkdir(parents=True, exist_ok=True)
        if not own_checkpoint:  # earlier attempts left nothing to resume: drop their curves
            for old in folder.glob(EVENTS_GLOB):
                old.unlink()
        self.empty = not any(folder.glob(EVENTS_GLOB))
        # A START marker at purge_step hides every earlier event at or past it (also from a
        # TensorBoard that is reading the folder right now); 0 on a fresh folder.
        purge = 0 if self.empty else resume_step + 1
        self.writer = SummaryWriter(str(folder), purge_step=purge, flush_secs=30)
        self.folder = folder

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(TAGS.get(key, key), value, step)

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandB:
    name = "W&B"

    def __init__(self, cfg: TrainConfig, workdir: Path, *, run_id: str, name: str) -> None:
        import wandb  # ImportError without wandb

        self.wandb = wandb
        folder = workdir / "wandb"
        earlier = list(folder.glob(f"offline-run-*-{run_id}")) if folder.exists() else []
        workdir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=cfg.wandb_project,
            id=run_id,
            name=name,
            group=cfg.log_group or None,
            tags=run_tags(cfg),
            config=cfg.to_dict(),
            dir=str(workdir),
            mode=cfg.wandb,
            resume="allow",
            # our log lines stay ours; give up on an unreachable server after 30 s
            settings=wandb.Settings(console="off", silent=True, init_timeout=30),
        )
        # W&B keeps the first value logged at a step and warns about every lower step: skip
        # the steps it already holds (a resumed online run), and replay history only into a
        # W&B run that holds nothing (offline: no earlier offline run of this id).
        self.first_step = self.run.step if self.run.resumed else 0
        self.empty = not self.run.resumed and not earlier

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if step >= self.first_step:
            self.run.log({TAGS.get(k, k): v for k, v in values.items()}, step=step)

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        if step >= self.first_step:
            self.run.log({tag: self.wandb.Image(image)}, step=step)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.run.finish()


# ##########################################################################################
# The tracker of one run
# ##########################################################################################


class Tracker:
    """Fans scalars and images out to the open backends; each failure turns its backend off
    with one message. A Tracker without backends (rank > 0, all off) does nothing."""

    def __init__(self, backends: Iterable[Any] = (), say: Callable[[str], None] = print) -> None:
        self.backends, self.say = list(backends), say

    def __bool__(self) -> bool:
        return bool(self.backends)

    def _each(self, what: str, fn: Callable[[Any], None]) -> None:
        for b in list(self.backends):
            try:
                fn(b)
            except Exception as err:  # a logger never stops training
                self.backends.remove(b)
                self.say(f"{b.name} logging is off from now on: {what} failed ({_why(err)})")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._each(f"logging step {step}", lambda b: b.scalars(step, values))

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        self._each(f"logging an image at step {step}", lambda b: b.image(step, tag, image))

    def flush(self) -> None:
        self._each("flushing", lambda b: b.flush())

    def close(self) -> None:
        self._each("closing", lambda b: b.close())
        self.backends = []


def _why(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def open_tracker(
    cfg: TrainConfig,
    workdir: str | os.PathLike,
    *,
    run_id: str,
    resume_step: int,
    own_checkpoint: bool,
    history: Callable[[], list[tuple[int, dict]]] = list,
    say: Callable[[str], None] = print,
) -> Tracker:
    """The trackers `cfg` asks for (`tensorboard`, `wandb`), for rank 0 of a run in `workdir`.

    resume_step: the step the run continues from (0 from scratch; a branch's trunk step).
    own_checkpoint: whether that step comes from the run's own checkpoint (a resume).
    history: the rows to replay into a tracker that holds nothing of the run yet (`read_history`).
    say: where the one-line notices go (a backend that cannot open is named with the reason).
    """
    workdir, name = Path(workdir), run_name(cfg, run_id)
    backends = []
    wanted = [("TensorBoard", "tensorboard")] if cfg.tensorboard else []
    wanted += [("W&B", "wandb")] if cfg.wandb != "off" else []
    for label, package in wanted:
        try:
            if package == "tensorboard":
                backend = _TensorBoard(
                    tensorboard_dir(cfg, workdir, name),
                    resume_step=resume_step,
                    own_checkpoint=own_checkpoint,
                )
            else:
                backend = _WandB(cfg, workdir, run_id=run_id, name=name)
        except ImportError as err:
            say(
                f"{label} logging is off: the {package!r} package is missing ({_why(err)}); "
                f"pip install 'rar-pipeline[logging]' (or {package}) to turn it on"
            )
            continue
        except Exception as err:  # no network, no W&B login, a folder we cannot write
            say(f"{label} logging is off: it did not start ({_why(err)})")
            continue
        backends.append(backend)
    tracker = Tracker(backends, say)
    where = [
        f"TensorBoard {b.folder}" if b.name == "TensorBoard" else f"W&B ({cfg.wandb})"
        for b in backends
    ]
    if where:
        say(f"logging to {', '.join(where)} as {name}")
    if resume_step > 0 and any(b.empty for b in backends):  # what the curve already holds
        rows = history()
        tracker._each(
            "replaying the run's history",
            lambda b: [b.scalars(step, values) for step, values in rows] if b.empty else None,
        )
    return tracker
