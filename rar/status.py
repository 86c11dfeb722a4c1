"""`rar status`: where every run and evaluation of a study stands, in one table. Torch-free.

A Table 2 reproduction is days of SLURM jobs that get preempted and requeued; this module
answers "what is happening" from what the stages write, and nothing else:

- run directories: `checkpoints/{epoch_E,final}.pt` (existence only, never loaded),
  `metrics.csv` (rar.train's log: epoch, loss, r, elapsed time), `job.json` (rar.launch's job
  record), `failure.txt`;
- evaluation directories: `samples.npz`, its `samples.npz.chunks/`, `metrics.json`, the job
  records `samples_job.json` / `metrics_job.json`, `failure.txt`;
- SLURM, asked once for all recorded job ids (`sacct`, then `squeue` for the ids sacct does
  not know yet); without SLURM tools, the records' own states (marked unverified).

It also owns the failure record (`failure.txt`): one line of reason, then where the logs are.
rar.launch writes it when a job fails and removes it when a later attempt succeeds; rar.train
writes it from inside a job, which covers a launching process that died before its job.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import math
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rar.experiments import Row, Run, Study, estimate
from rar.io import atomic_write_text

FAILURE_FILE = "failure.txt"
# rar.launch.LIVE_STATES, repeated here: importing rar.launch would import submitit.
LIVE_STATES = frozenset(
    {
        "SUBMITTED", "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED",
        "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT",
        "PREEMPTED", "READY", "UNKNOWN",
    }
)  # fmt: skip
LOST = "LOST"  # a record says the job is live, but its scheduler (or process) knows it not
UNKNOWN_GRACE_S = 120.0  # as rar.launch: a fresh SLURM job may be unknown to sacct this long
LOG_TAIL_LINES = 5
RATE_WINDOW = 20  # metrics.csv rows behind the ETA's throughput
STAGES = ("waiting", "training", "sampling", "evaluating", "done", "failed")


# ##########################################################################################
# The failure record (written by rar.launch and rar.train, read here and by rar.report)
# ##########################################################################################

# What a SLURM end state means, in words a user acts on.
_STATE_REASONS = {
    "NODE_FAIL": "node failure (SLURM state NODE_FAIL)",
    "OUT_OF_MEMORY": "out of memory (SLURM state OUT_OF_MEMORY)",
    "TIMEOUT": "time limit reached with no requeue left (SLURM state TIMEOUT)",
    "DEADLINE": "deadline reached (SLURM state DEADLINE)",
    "BOOT_FAIL": "node failed to boot (SLURM state BOOT_FAIL)",
    "CANCELLED": "cancelled (SLURM state CANCELLED)",
    "UNKNOWN": "job gone: neither the scheduler nor a result knows it",
    "GONE": "job gone: its process ended without a result",
    LOST: "job gone: no longer running (scheduler or process), and it left no result",
}
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b:?.*$")
_NONFINITE = re.compile(r"non-finite loss.*? at step (\d+)")
_ENDED = re.compile(r"ended ([A-Z_]+)\b.* without a result")
MAX_REASON_CHARS = 300


def failure_reason(error: BaseException | str) -> str:
    """One line saying why a job failed, from its exception or rar.launch's error text (which
    holds the job's traceback, or the state it ended in)."""
    text = str(error)
    if isinstance(error, BaseException):
        text = f"{type(error).__name__}: {text}"
    if "timed-out too many times" in text:
        return "time limit reached with no requeue left (submitit: timed-out too many times)"
    if m := _NONFINITE.search(text):
        return f"non-finite loss at step {m.group(1)}"
    if "OutOfMemoryError" in text or "CUDA out of memory" in text or "MemoryError" in text:
        return _one_line(f"out of memory: {_exception_line(text)}")
    first = text.strip().splitlines()[0] if text.strip() else ""
    if m := _ENDED.search(first):
        state = m.group(1)
        return _STATE_REASONS.get(state, f"job ended {state} without a result")
    return _one_line(_exception_line(text))


def _exception_line(text: str) -> str:
    """The traceback's last exception line (the one that stopped the job), else line one."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return line
    return lines[0] if lines else "no reason recorded"


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


def stdout_log() -> str | None:
    """The file this process's output goes to (a Snakemake rule's `> {log}`), if one."""
    with contextlib.suppress(OSError):
        target = os.readlink("/proc/self/fd/1")
        if os.path.isfile(target):
            return target
    return None


def write_failure(folder: str | Path, error: BaseException | str, logs: list[str] = ()) -> Path:
    """Write `<folder>/failure.txt`: the reason in its first line, then one `log:` line per
    log file worth reading. Atomic, so a reader never sees half a reason."""
    path = Path(folder) / FAILURE_FILE
    lines = [failure_reason(error), *(f"log: {p}" for p in dict.fromkeys(logs) if p)]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def clear_failure(folder: str | Path) -> None:
    """Remove a failure record left by an earlier attempt (this one succeeded)."""
    (Path(folder) / FAILURE_FILE).unlink(missing_ok=True)


def read_failure(folder: Path) -> tuple[str, list[str], float] | None:
    """(reason, log paths, mtime) of `<folder>/failure.txt`, or None."""
    path = folder / FAILURE_FILE
    try:
        text, mtime = path.read_text(), path.stat().st_mtime
    except OSError:
        return None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    logs = [ln[len("log:") :].strip() for ln in lines[1:] if ln.startswith("log:")]
    return (lines[0] if lines else "no reason recorded"), logs, mtime


# ##########################################################################################
# What one run / evaluation directory says
# ##########################################################################################


@dataclass
class Progress:
    """What a run's metrics.csv says: its last row, and its time summed over jobs."""

    epoch: float | None = None
    loss: float | None = None
    ratio: float | None = None
    elapsed_s: float = 0.0  # training time of all jobs so far (the log's elapsed_s restarts)
    epochs_per_s: float | None = None  # recent throughput, of the last job


def read_progress(path: Path) -> Progress:
    """Parse metrics.csv (rar.train.METRICS_FIELDS). A torn last line (being appended now) and
    rows that do not parse are skipped; each job restarts `elapsed_s` at 0, so the time used is
    the sum of each job's last value."""
    try:
        text = path.read_text()
    except OSError:
        return Progress()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = []
    for r in csv.DictReader(text.splitlines()):
        with contextlib.suppress(TypeError, ValueError, KeyError):
            rows.append(
                (float(r["epoch"]), float(r["loss"]), float(r["ratio"]), float(r["elapsed_s"]))
            )
    if not rows:
        return Progress()
    total, job_start = 0.0, 0
    for i in range(1, len(rows)):
        if rows[i][3] < rows[i - 1][3]:  # elapsed went back: a new job resumed the run
            total += rows[i - 1][3]
            job_start = i
    total += rows[-1][3]
    epoch, loss, ratio, _ = rows[-1]
    return Progress(
        epoch, loss, ratio, total, _rate(rows[max(job_start, len(rows) - RATE_WINDOW) :])
    )


def _rate(rows: list[tuple[float, float, float, float]]) -> float | None:
    """Epochs per second over the given rows of one job (None without two distinct times)."""
    return epochs_per_second([(r[0], r[3]) for r in rows])


def epochs_per_second(points: list[tuple[float, float]]) -> float | None:
    """Throughput between the first and last of one job's (epoch, elapsed_s) points (its last
    RATE_WINDOW log rows); None without two distinct times. Behind every ETA: this table's and
    the training log line's (rar.train)."""
    if len(points) < 2:
        return None
    d_epoch, d_time = points[-1][0] - points[0][0], points[-1][1] - points[0][1]
    return d_epoch / d_time if d_epoch > 0 and d_time > 0 else None


def eta_seconds(epoch: float, target_epoch: float, rate: float | None) -> float | None:
    """Seconds until `target_epoch` at `rate` epochs/s (`epochs_per_second`); None if unknown."""
    return max(0.0, target_epoch - epoch) / rate if rate else None


def read_record(path: Path) -> dict[str, Any] | None:
    """A job record (rar.launch), with its file's mtime as `_mtime`; None if absent/unreadable."""
    try:
        record = json.loads(path.read_text())
        record["_mtime"] = path.stat().st_mtime
    except (OSError, ValueError, TypeError):
        return None
    return record if isinstance(record, dict) else None


def record_gpus(record: dict[str, Any] | None) -> int:
    """GPUs a job held: its `gpus` (0 for a CPU job) as rar.launch records it; in a record
    older than that field, its tasks (one per GPU), else 1."""
    with contextlib.suppress(TypeError, ValueError):
        return max(0, int((record or {}).get("gpus")))
    return record_processes(record)


def record_processes(record: dict[str, Any] | None) -> int:
    """Processes a job ran (its tasks), at least 1."""
    with contextlib.suppress(TypeError, ValueError):
        return max(1, int((record or {}).get("tasks")))
    return 1


# ##########################################################################################
# Job states: SLURM asked once, local processes looked up
# ##########################################################################################


@dataclass
class JobInfo:
    """A job's state as we know it; `verified` is False when only its record says so."""

    job_id: str
    backend: str
    state: str
    requeues: int = 0
    verified: bool = True

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


def query_slurm(
    job_ids: list[str], *, timeout_s: float = 10.0
) -> dict[str, tuple[str, int]] | None:
    """{job id: (state, times requeued)} for the ids SLURM knows, in one sacct call (and one
    squeue call for ids sacct does not list yet); None when there are no SLURM tools."""
    if shutil.which("sacct") is None and shutil.which("squeue") is None:
        return None
    found: dict[str, tuple[str, int]] = {}
    if not job_ids:
        return found
    ids = ",".join(sorted(set(job_ids)))
    if shutil.which("sacct"):
        # One line per run of a job (--duplicates), oldest first: "CANCELLED by 0" -> CANCELLED.
        cmd = ["sacct", "-j", ids, "-X", "-n", "-P", "--duplicates", "-o", "JobIDRaw,State"]
        out = _run(cmd, timeout_s)
        runs: dict[str, list[str]] = {}
        for line in out.splitlines():
            jid, _, state = line.partition("|")
            if state.split():
                runs.setdefault(jid.strip(), []).append(state.split()[0])
        found = {jid: (states[-1], len(states) - 1) for jid, states in runs.items()}
    missing = sorted(set(job_ids) - set(found))
    if missing and shutil.which("squeue"):
        out = _run(["squeue", "-h", "-j", ",".join(missing), "-o", "%i|%T"], timeout_s)
        for line in out.splitlines():
            jid, _, state = line.partition("|")
            if state.strip():
                found[jid.strip()] = (state.strip(), 0)
    return found


def _run(cmd: list[str], timeout_s: float) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # exists (another user's) or not a pid we can judge: do not call it lost
    return True


def job_info(
    record: dict[str, Any] | None, slurm: dict[str, tuple[str, int]] | None, now: float
) -> JobInfo | None:
    """The state of the job in `record`: SLURM's answer for a SLURM job, whether its process
    lives for a local or debug one; LOST when the record says live and nothing knows the job."""
    if not record or "job_id" not in record:
        return None
    jid, backend = str(record["job_id"]), str(record.get("backend", "?"))
    state, requeues = str(record.get("state", "UNKNOWN")), int(record.get("requeues") or 0)
    info = JobInfo(jid, backend, state, requeues)
    if backend == "slurm":
        if slurm is None:  # no SLURM tools here: the record's word only
            info.verified = False
        elif jid in slurm:
            info.state, sacct_requeues = slurm[jid]
            info.requeues = max(requeues, sacct_requeues)
        elif info.live and now - record.get("_mtime", now) > UNKNOWN_GRACE_S:
            info.state = LOST
    elif record.get("host") not in (None, socket.gethostname()):
        info.verified = False  # a process on another machine: we cannot look it up
    elif info.live:
        # local: the controller's pid; debug: the launching process's ("pid-N"). Records
        # name no host yet, so one written on another node would be judged here too.
        pid = jid.removeprefix("pid-")
        if pid.isdigit() and not _pid_alive(int(pid)):
            info.state = LOST
    return info


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

    @property
    def failed(self) -> bool:
        """Whether any row has failed (`rar status` then exits 1)."""
        return any(row.stage == "failed" for row in self.rows)

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
            self._progress[run] = read_progress(self.path(self.study.run_dir(run)) / "metrics.csv")
        return self._progress[run]

    def hours(self, run: str) -> tuple[float, float]:
        """(GPU-hours, CPU-hours) of a run's training: its time x the GPUs of its job, or x
        its processes when the job had no GPU."""
        record = read_record(self.path(self.study.run_dir(run)) / "job.json")
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
    if info is not None and not info.live and info.state not in ("COMPLETED", "FINISHED"):
        return _STATE_REASONS.get(info.state, f"job {info.job_id} ended {info.state}"), []
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
    started = (run_dir / "job.json").exists() or progress.epoch is not None
    _stage_row(reader, row, "training", run_dir, "job.json", reader.log("train", run.id))
    if row.stage == "failed":
        return
    if not started:
        row.stage, row.log = "waiting", None
        if run.kind == "branch":
            trunk_ckpt = reader.path(study.checkpoint(run.trunk, run.branch_epoch))
            if not trunk_ckpt.exists():
                row.waits_on = f"trunk {run.trunk} epoch {run.branch_epoch:g}"
        return
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
    if (ev_dir / "metrics.json").exists():
        row.stage = "done"
        return
    chunks = ev_dir / "samples.npz.chunks"
    if ev.kind != "real" and not reader.path(study.samples_of(ev_id)).exists():
        _stage_row(reader, row, "sampling", ev_dir, "samples_job.json", reader.log("sample", ev_id))
        chunk_size = study.config["sampling"]["chunk_size"]  # the schema filled the default
        total = math.ceil(ev.num_samples / max(1, chunk_size))
        _, eta = _sample_eta(chunks, total)
        row.eta_s = eta if row.stage == "sampling" else None
        started = (ev_dir / "samples_job.json").exists() or chunks.exists()
        _not_started(row, "sampling", started, "a sampling job")
        return
    _stage_row(reader, row, "evaluating", ev_dir, "metrics_job.json", reader.log("evaluate", ev_id))
    _not_started(row, "evaluating", (ev_dir / "metrics_job.json").exists(), "an evaluation job")


def _not_started(row: RowStatus, stage: str, started: bool, job: str) -> None:
    """A stage with no job yet is waiting (in Snakemake's queue), not running."""
    if row.stage == stage and not started:
        row.stage, row.waits_on, row.log = "waiting", job, None


def row_status(reader: _Reader, label: str, run_id: str, ev_id: str | None) -> RowStatus:
    """The status of one line: training until its checkpoint exists, then its evaluation."""
    study = reader.study
    untrained = ev_id is not None and study.evaluations[ev_id].kind != "model"
    if run_id not in study.runs or untrained:  # released, initial weights, real: no training
        row = RowStatus(label=label, run=run_id, evaluation=ev_id, stage="done")
        if ev_id is not None:
            _eval_row(reader, row, ev_id)
        return row
    run = study.runs[run_id]
    if ev_id is not None:
        target_epoch = run.config.epochs  # sampling waits for final.pt, curve points too
    else:  # a trunk no table row uses: trained up to its last branch point
        target_epoch = max(run.segments) if run.segments else run.config.epochs
    target = reader.path(study.checkpoint(run_id, target_epoch))
    progress = reader.progress(run_id)
    gpu_hours, cpu_hours = reader.hours(run_id)
    row = RowStatus(
        label=label, run=run_id, evaluation=ev_id, stage="done",
        epoch=target_epoch if target.exists() else (progress.epoch or 0.0),
        epochs=target_epoch, ratio=progress.ratio, loss=progress.loss,
        gpu_hours=gpu_hours, cpu_hours=cpu_hours,
    )  # fmt: skip
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
    paths = [root / study.run_dir(r) / "job.json" for r in study.runs]
    for ev in study.evaluations:
        paths += [root / study.eval_dir(ev) / n for n in ("samples_job.json", "metrics_job.json")]
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
        reader.path(study.checkpoint(r.id, _target_epoch(study, r))).exists()
        for r in study.runs.values()
    )
    evals_done = sum(
        (reader.path(study.eval_dir(e)) / "metrics.json").exists() for e in study.evaluations
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
    )


def _target_epoch(study: Study, run: Run) -> float:
    """The epoch a run is done at: its end, or a trunk no table row needs: its last segment."""
    in_table = any(row.run == run.id for rows in study.tables.values() for row in rows)
    if run.kind == "trunk" and run.segments and not in_table:
        return max(run.segments)
    return run.config.epochs


# ##########################################################################################
# Text output
# ##########################################################################################

# The hours column is "GPU-h", or "CPU-h" when every job with hours ran without a GPU (the CPU
# demo), or "hours" with the unit in each cell when both kinds ran.
HEADER = ("row", "run", "stage", "epochs", "r", "loss", "job", "requeues", "GPU-h", "ETA", "note")
HOURS = HEADER.index("GPU-h")


def format_duration(seconds: float | None) -> str:
    """3d4h, 5h12m, 7m, <1m; "-" when unknown."""
    if seconds is None:
        return "-"
    minutes = int(seconds // 60)
    if minutes < 1:
        return "<1m"
    days, hours, mins = minutes // 1440, minutes // 60 % 24, minutes % 60
    if days:
        return f"{days}d{hours}h"
    return f"{hours}h{mins:02d}m" if hours else f"{mins}m"


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
        row.label, row.run, row.stage, epochs,
        "-" if row.ratio is None else f"{row.ratio:.2f}",
        "-" if row.loss is None else f"{row.loss:.4f}",
        job, str(row.requeues), _hours_cell(row, mixed), format_duration(row.eta_s), note,
    )  # fmt: skip


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
