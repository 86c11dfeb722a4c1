"""`rar status`: where every run and evaluation of a study stands, in one table. Torch-free.

A Table 2 reproduction is days of SLURM jobs that get preempted and requeued; this module
answers "what is happening" from what the stages write, and nothing else:

- run directories: `checkpoints/{epoch_E,final}.pt` (existence only, never loaded),
  `metrics.csv` (rar.training.loop's log: epoch, loss, r, elapsed time), `job.json`
  (rar.ops.launch's job record), `failure.txt`;
- evaluation directories: `samples.npz`, its `samples.npz.chunks/`, `metrics.json`, the job
  records `samples_job.json` / `metrics_job.json`, `failure.txt`;
- SLURM, asked once for all recorded job ids (`sacct`, then `squeue` for the ids sacct does
  not know yet); without SLURM tools, the records' own states (marked unverified).

The records themselves (job records, `failure.txt`, progress, the SLURM query) are read and
written by rar.experiments.records; this module only assembles and prints the table.
"""

from __future__ import annotations

import datetime
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rar.experiments import Row, Run, Study, estimate
from rar.experiments.build import chunk_size_of
from rar.experiments.records import (
    ENDED_WELL,
    JOB_RECORD,
    METRICS_CSV,
    STATE_REASONS,
    JobInfo,
    Progress,
    eta_seconds,
    format_duration,
    job_info,
    job_record_for,
    query_slurm,
    read_failure,
    read_progress,
    read_record,
    record_gpus,
    record_processes,
)
from rar.experiments.results import METRICS_JSON

LOG_TAIL_LINES = 5
STAGES = ("waiting", "training", "sampling", "evaluating", "done", "failed")

# ##########################################################################################
# One line of the table
# ##########################################################################################


@dataclass
class RowStatus:
    """One row of `rar status`: a table row (run + evaluation), a curve point, or a trunk."""

    label: str
    run: str
    evaluation: str | None
    stage: str  # one of STAGES
    epoch: float | None = None  # epochs done (absolute: a branch counts from 0, like its trunk)
    epochs: float | None = None  # epochs this row needs trained (None: a released checkpoint)
    waits_on: str | None = None  # a waiting branch: "trunk <id> epoch <E>"
    ratio: float | None = None  # current r of the annealing schedule
    loss: float | None = None
    job_id: str | None = None
    job_state: str | None = None  # "?"-suffixed in the table when unverified
    job_verified: bool = True
    requeues: int = 0
    gpu_hours: float = 0.0  # the run's training, so far: time x GPUs of its job
    cpu_hours: float = 0.0  # the same for a job without a GPU: time x processes
    eta_s: float | None = None  # until this stage's output, at the recent throughput
    reason: str | None = None  # failed: why (failure.txt or the job's end state)
    log: str | None = None  # the log to read for this row's current stage
    log_tail: list[str] = field(default_factory=list)  # failed rows only


@dataclass
class Status:
    study: str
    generated: str
    rows: list[RowStatus]
    runs_done: int
    runs_total: int
    evaluations_done: int
    evaluations_total: int
    gpu_hours_used: float
    gpu_hours_planned: float | None
    slurm: bool  # whether SLURM answered (False: job states are the records' own)
    columns: dict[str, list[str]] = field(default_factory=dict)  # table -> its row keys
    cpu_hours_used: float = 0.0  # training hours of jobs without a GPU (the CPU demo)
    data_clashes: list[str] = field(default_factory=list)  # Study.data_clashes: refused

    @property
    def failed(self) -> bool:
        """Whether any row has failed, or a data set is refused (`rar status` then exits 1)."""
        return any(row.stage == "failed" for row in self.rows) or bool(self.data_clashes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Status:
        return cls(**{**data, "rows": [RowStatus(**r) for r in data["rows"]]})


class _Reader:
    """Reads each run and evaluation directory once (files are shared between rows)."""

    def __init__(self, study: Study, root: Path, slurm: dict | None, now: float) -> None:
        self.study, self.root, self.slurm, self.now = study, root, slurm, now
        self._progress: dict[str, Progress] = {}

    def path(self, relative: str) -> Path:
        return self.root / relative

    def progress(self, run: str) -> Progress:
        if run not in self._progress:
            self._progress[run] = read_progress(self.path(self.study.run_dir(run)) / METRICS_CSV)
        return self._progress[run]

    def hours(self, run: str) -> tuple[float, float]:
        """(GPU-hours, CPU-hours) of a run's training: its time x the GPUs of its job, or x
        its processes when the job had no GPU."""
        record = read_record(self.path(self.study.run_dir(run)) / JOB_RECORD)
        hours = self.progress(run).elapsed_s / 3600
        gpus = record_gpus(record)
        return (hours * gpus, 0.0) if gpus else (0.0, hours * record_processes(record))

    def log(self, rule: str, name: str) -> Path | None:
        """The newest Snakemake log of `rule` for `name` (a trunk has one per segment)."""
        folder = self.root / "logs" / self.study.name / rule
        candidates = [folder / f"{name}.log", *sorted(folder.glob(f"{name}-epoch_*.log"))]
        existing = [p for p in candidates if p.exists()]
        return max(existing, key=lambda p: p.stat().st_mtime) if existing else None


def _failed(
    folder: Path, record: dict | None, info: JobInfo | None
) -> tuple[str, list[str]] | None:
    """(reason, logs) if this stage's latest attempt failed: a failure record at least as new
    as the job record (an older one belongs to an attempt since retried), or a job that ended
    in a failed state or vanished."""
    failure = read_failure(folder)
    if failure is not None:
        reason, logs, mtime = failure
        if record is None or mtime + 1.0 >= record["_mtime"] or not (info and info.live):
            return reason, logs
    if info is not None and not info.live and info.state not in ENDED_WELL:
        return STATE_REASONS.get(info.state, f"job {info.job_id} ended {info.state}"), []
    return None


def _stage_row(
    reader: _Reader, row: RowStatus, stage: str, folder: Path, record: str, log: Path | None
) -> None:
    """Fill `row` for a stage in progress (its output missing): its job, failure, log."""
    entry = read_record(folder / record)
    info = job_info(entry, reader.slurm, reader.now)
    row.stage = stage
    row.log = str(log) if log else None
    if info is not None:
        row.job_id, row.job_state = info.job_id, info.state
        row.job_verified, row.requeues = info.verified, info.requeues
    failed = _failed(folder, entry, info)
    if failed is not None:
        row.stage, row.reason = "failed", failed[0]
        log_path = log or next((Path(p) for p in failed[1] if Path(p).exists()), None)
        row.log = str(log_path) if log_path else (failed[1][0] if failed[1] else row.log)
        row.log_tail = _tail(log_path, LOG_TAIL_LINES) if log_path else []


def _tail(path: Path, lines: int) -> list[str]:
    """The last lines of a log, reading at most its last 64 KiB (logs of long runs are big)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return [ln.rstrip() for ln in text.splitlines() if ln.strip()][-lines:]


def _train_row(reader: _Reader, row: RowStatus, run: Run, target: Path) -> None:
    """A row whose checkpoint `target` is missing: training, waiting (on its trunk), failed."""
    study, run_dir = reader.study, reader.path(reader.study.run_dir(run.id))
    progress = reader.progress(run.id)
    started = (run_dir / JOB_RECORD).exists() or progress.epoch is not None
    _stage_row(reader, row, "training", run_dir, JOB_RECORD, reader.log("train", run.id))
    if row.stage == "failed":
        return
    if not started:
        row.stage, row.log = "waiting", None
        if run.kind == "branch":
            trunk_ckpt = reader.path(study.checkpoint(run.trunk, run.branch_epoch))
            if not trunk_ckpt.exists():
                row.waits_on = f"trunk {run.trunk} epoch {run.branch_epoch:g}"
        return
    if run.kind == "trunk" and row.job_state in ENDED_WELL:
        # a segment's job ended with its checkpoint; Snakemake has not started the next job
        written = [s for s in run.segments if reader.path(study.checkpoint(run.id, s)).exists()]
        if written:
            row.stage, row.log = "waiting", None
            row.waits_on = f"its next segment, from epoch {max(written):g}"
    if progress.epochs_per_s:
        row.eta_s = eta_seconds(row.epoch, row.epochs, progress.epochs_per_s)


def _sample_eta(chunk_dir: Path, total: int) -> tuple[int, float | None]:
    """(chunks made, seconds to the rest) from the chunk files' times; sampling has no log."""
    try:
        times = sorted(p.stat().st_mtime for p in chunk_dir.glob("chunk_*.npz"))
    except OSError:
        return 0, None
    if len(times) < 2:
        return len(times), None
    per_chunk = (times[-1] - times[0]) / (len(times) - 1)
    return len(times), max(0, total - len(times)) * per_chunk


def _eval_row(reader: _Reader, row: RowStatus, ev_id: str) -> None:
    """A row whose run is trained: sampling, evaluating, done, or failed."""
    study = reader.study
    ev, ev_dir = study.evaluations[ev_id], reader.path(study.eval_dir(ev_id))
    if (ev_dir / METRICS_JSON).exists():
        row.stage = "done"
        return
    chunks = ev_dir / "samples.npz.chunks"
    sampling, scoring = _eval_records(ev_dir)
    if ev.kind != "real" and not reader.path(study.samples_of(ev_id)).exists():
        _stage_row(reader, row, "sampling", ev_dir, sampling.name, reader.log("sample", ev_id))
        chunk_size = chunk_size_of(study.config, ev.metrics)
        total = math.ceil(ev.num_samples / max(1, chunk_size))
        _, eta = _sample_eta(chunks, total)
        row.eta_s = eta if row.stage == "sampling" else None
        started = sampling.exists() or chunks.exists()
        _not_started(row, "sampling", started, "a sampling job")
        return
    _stage_row(reader, row, "evaluating", ev_dir, scoring.name, reader.log("evaluate", ev_id))
    _not_started(row, "evaluating", scoring.exists(), "an evaluation job")


def _eval_records(ev_dir: Path) -> tuple[Path, Path]:
    """An evaluation's job records: its sampling's and its scoring's."""
    return job_record_for(ev_dir / "samples.npz"), job_record_for(ev_dir / METRICS_JSON)


def _not_started(row: RowStatus, stage: str, started: bool, job: str) -> None:
    """A stage with no job yet is waiting (in Snakemake's queue), not running."""
    if row.stage == stage and not started:
        row.stage, row.waits_on, row.log = "waiting", job, None


def row_status(reader: _Reader, label: str, run_id: str, ev_id: str | None) -> RowStatus:
    """The status of one line: training until its checkpoint exists, then its evaluation."""
    study = reader.study
    trains = ev_id is None or study.evaluations[ev_id].kind == "model"
    if run_id not in study.runs or not trains:  # released, initial weights, real images
        row = RowStatus(label=label, run=run_id, evaluation=ev_id, stage="done")
        if ev_id is not None:
            _eval_row(reader, row, ev_id)
        return row
    run = study.runs[run_id]
    # sampling waits for final.pt, curve points too; a trunk no table row uses trains up to
    # its last branch point (Run.end_epoch)
    target_epoch = run.config.epochs if ev_id is not None else run.end_epoch
    target = reader.path(study.checkpoint(run_id, target_epoch))
    progress = reader.progress(run_id)
    gpu_hours, cpu_hours = reader.hours(run_id)
    row = RowStatus(
        label=label,
        run=run_id,
        evaluation=ev_id,
        stage="done",
        epoch=target_epoch if target.exists() else (progress.epoch or 0.0),
        epochs=target_epoch,
        ratio=progress.ratio,
        loss=progress.loss,
        gpu_hours=gpu_hours,
        cpu_hours=cpu_hours,
    )
    if not target.exists():
        _train_row(reader, row, run, target)
    elif ev_id is not None:
        _eval_row(reader, row, ev_id)
    return row


def _short_label(row: Row) -> str:
    """A row's label in its table: "(200, 300)" or "z-curve" for the values of its keys (the
    table's header names them), or the label the config gives."""
    values = [f"{v:g}" if isinstance(v, float) else str(v) for v in row.keys.values()]
    derived = ", ".join(f"{k}={v}" for k, v in zip(row.keys, values, strict=True))
    if row.label != derived or not values:
        return row.label
    return values[0] if len(values) == 1 else f"({', '.join(values)})"


def _lines(study: Study) -> list[tuple[str, str, str | None]]:
    """(label, run, evaluation) of every line the DAG needs, in the order of the tables: each
    table's rows, then its curve points; last, trunks that no row trains to the end."""
    lines: list[tuple[str, str, str | None]] = []
    for table, rows in study.tables.items():
        for row in rows + study.references.get(table, []):
            lines.append((f"{table} {_short_label(row)}", row.run, row.evaluation))
        for ev_id in study.curve_evaluations.get(table, []):
            ev = study.evaluations[ev_id]
            labels = [_short_label(r) for r in rows if r.run == ev.run]
            label = f"{table} {labels[0] if labels else ev.run} @{ev.epoch:g}"
            lines.append((label, ev.run, ev_id))
    used = {run for _, run, _ in lines}
    for run in study.runs.values():
        if run.id not in used:
            points = ", ".join(f"{s:g}" for s in run.segments)
            lines.append(
                (f"{run.kind} (branches at {points})" if points else run.kind, run.id, None)
            )
    return lines


def _record_ids(study: Study, root: Path) -> list[str]:
    """The SLURM job ids in every job record of the study: one query answers all rows."""
    paths = [root / study.run_dir(r) / JOB_RECORD for r in study.runs]
    for ev in study.evaluations:
        paths += _eval_records(root / study.eval_dir(ev))
    ids = []
    for path in paths:
        record = read_record(path) if path.exists() else None
        if record and record.get("backend") == "slurm" and record.get("job_id"):
            ids.append(str(record["job_id"]))
    return ids


def collect(study: Study, *, root: str | Path = ".", use_slurm: bool = True) -> Status:
    """The status of every line of `study`, read from the outputs under `root` (the directory
    the study's relative paths, results/… and logs/…, start from)."""
    root, now = Path(root), time.time()
    slurm = query_slurm(_record_ids(study, root)) if use_slurm else None
    reader = _Reader(study, root, slurm, now)
    rows = [row_status(reader, *line) for line in _lines(study)]
    runs_done = sum(
        reader.path(study.checkpoint(r.id, r.end_epoch)).exists() for r in study.runs.values()
    )
    evals_done = sum(
        (reader.path(study.eval_dir(e)) / METRICS_JSON).exists() for e in study.evaluations
    )
    return Status(
        study=study.name,
        generated=datetime.datetime.fromtimestamp(now).isoformat(timespec="seconds"),
        rows=rows,
        runs_done=runs_done,
        runs_total=len(study.runs),
        evaluations_done=evals_done,
        evaluations_total=len(study.evaluations),
        gpu_hours_used=sum(reader.hours(r)[0] for r in study.runs),
        gpu_hours_planned=estimate(study)["gpu_hours"],
        slurm=slurm is not None,
        columns={t: list(rows[0].keys) for t, rows in study.tables.items() if rows},
        cpu_hours_used=sum(reader.hours(r)[1] for r in study.runs),
        data_clashes=study.data_clashes(root),
    )


# ##########################################################################################
# Text output
# ##########################################################################################

# The hours column is "GPU-h", or "CPU-h" when every job with hours ran without a GPU (the CPU
# demo), or "hours" with the unit in each cell when both kinds ran.
HEADER = ("row", "run", "stage", "epochs", "r", "loss", "job", "requeues", "GPU-h", "ETA", "note")
HOURS = HEADER.index("GPU-h")


def format_hours(hours: float | None) -> str:
    """Hours, readable from a CPU demo's 0.0012 to a study's 29,776 GPU-hours."""
    if hours is None:
        return "?"
    return f"{hours:,.0f}" if hours >= 100 else f"{hours:.3g}"


def _hours_units(rows: list[RowStatus]) -> set[str]:
    """The kinds of hours the rows used: {"GPU"}, {"CPU"}, both, or none."""
    return {"GPU" if r.gpu_hours else "CPU" for r in rows if r.gpu_hours or r.cpu_hours}


def _hours_cell(row: RowStatus, mixed: bool) -> str:
    if not mixed:
        return format_hours(row.gpu_hours or row.cpu_hours)
    if row.gpu_hours:
        return f"{format_hours(row.gpu_hours)} GPU"
    return f"{format_hours(row.cpu_hours)} CPU" if row.cpu_hours else "0"


def _cells(row: RowStatus, mixed: bool = False) -> tuple[str, ...]:
    job = "-"
    if row.job_id:
        job = f"{row.job_id} {row.job_state}{'' if row.job_verified else '?'}"
    note = row.reason or (f"waits on {row.waits_on}" if row.waits_on else "")
    epochs = "-" if row.epochs is None else f"{row.epoch or 0:.3g}/{row.epochs:g}"
    return (
        row.label,
        row.run,
        row.stage,
        epochs,
        "-" if row.ratio is None else f"{row.ratio:.2f}",
        "-" if row.loss is None else f"{row.loss:.4f}",
        job,
        str(row.requeues),
        _hours_cell(row, mixed),
        format_duration(row.eta_s),
        note,
    )


def format_status(status: Status) -> str:
    """The table, then the totals and the failed rows with the end of their logs."""
    units = _hours_units(status.rows)
    header = list(HEADER)
    header[HOURS] = "hours" if len(units) > 1 else f"{next(iter(units), 'GPU')}-h"
    cells = [tuple(header), *(_cells(r, mixed=len(units) > 1) for r in status.rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER) - 1)]
    lines = [
        f"study {status.study} at {status.generated}"
        + ("" if status.slurm else " (no SLURM here: job states are the records' own, '?')")
    ]
    if status.columns:
        keys = (f"{t} ({', '.join(k)})" for t, k in status.columns.items())
        lines.append(f"rows: {'; '.join(keys)}")
    for c in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=False)) + "  " + c[-1])
    lines = [ln.rstrip() for ln in lines]
    planned = status.gpu_hours_planned  # None: the config has no throughput figures
    lines += [
        "",
        f"GPU-hours: {format_hours(status.gpu_hours_used)} used of "
        f"{format_hours(planned)} planned (rar plan)",
    ]
    if status.cpu_hours_used:
        lines.append(f"CPU-hours: {format_hours(status.cpu_hours_used)} used by jobs without a GPU")
    lines += [
        f"runs: {status.runs_done}/{status.runs_total} done; evaluations: "
        f"{status.evaluations_done}/{status.evaluations_total} done",
    ]
    if status.data_clashes:
        lines.append("data sets made from another source (the workflow refuses them):")
        lines += [f"  {line}" for line in status.data_clashes]
    # A run in two tables fails once: list each failure (reason and log) once.
    failed = {(r.reason, r.log): r for r in status.rows if r.stage == "failed"}
    if failed:
        lines.append(f"failed: {len(failed)}")
    for row in failed.values():
        lines.append(f"  {row.label} ({row.run}): {row.reason}")
        lines.append(f"    log: {row.log or 'none found'}")
        lines += [f"    | {ln}" for ln in row.log_tail]
    return "\n".join(lines)


def watch(render, interval_s: float) -> int:
    """Redraw `render()` every `interval_s` seconds until Ctrl-C (which exits cleanly)."""
    try:
        while True:
            text = render()
            print("\033[2J\033[H" + text, flush=True)  # clear the screen, cursor home
            time.sleep(interval_s)
    except KeyboardInterrupt:
        print()
        return 0
