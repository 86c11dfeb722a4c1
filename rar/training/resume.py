"""A run's own checkpoints, and what makes a run resumable: atomic saves that keep `last.pt`'s
predecessor, the newest checkpoint that loads (`find_resume_point`), damaged files set aside,
and the check that a resume continues the same run and a branch changes only what it may.

Apart from rar.training.loop so that the loop reads on one screen; rar.model.checkpoint holds the
loader of every checkpoint file (ours and the released ones), which `load_checkpoint` calls.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import math
import os
import subprocess
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from rar.files import atomic_open
from rar.model.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_file
from rar.settings.training import BRANCH_KEYS, RESUME_FREE, TrainConfig


@functools.cache
def code_version() -> str:
    """The git commit of the code that wrote a checkpoint (plus "-dirty"), if known."""
    try:
        root = Path(__file__).resolve().parents[1]
        sha = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return sha or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_checkpoint(path: Path, **state) -> None:
    """Atomically (rar.files): a killed job never leaves a checkpoint that looks complete."""
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
    with contextlib.suppress(OSError):  # persist the renames (best effort, as rar.files)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint of this pipeline; CheckpointError (a ValueError) naming the file
    when it is missing, truncated, unsafe or something else (rar.model.checkpoint)."""
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


def set_aside(point: ResumePoint, metrics_csv: Path) -> None:
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


def check_compatible(cfg: TrainConfig, ckpt: dict, path: Path, *, branch: bool) -> None:
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
