"""Job records, failure records, training logs, progress and the SLURM query: what every stage
leaves about its jobs, read and written in one place. Torch- and submitit-free.

- the job record (`job.json`, `samples_job.json`, `metrics_job.json`): rar.ops.launch writes it
  through `write_record`; `load_record` and `read_record` read it, `job_info` says what state
  its job is really in (SLURM asked once for all ids by `query_slurm`; a local or debug job's
  process looked up);
- the failure record (`failure.txt`): one line of reason, then where the logs are; rar.ops.launch
  writes it when a job fails and removes it when a later attempt succeeds, rar.training.loop writes
  it from inside a job (which covers a launching process that died before its job);
- the training logs (`metrics.csv`, `validation.csv`): `MetricsLog` writes them (rar.training.loop,
  rar.training.watch); `log_text` and `log_rows` read them as they grow;
- progress (`metrics.csv`): epochs, the throughput of the last RATE_WINDOW rows and the ETA,
  as the training log line and `rar status` both show it.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rar.files import atomic_write_text

FAILURE_FILE = "failure.txt"
JOB_RECORD = "job.json"  # a run's job record, in its run directory (rar.ops.launch)
METRICS_CSV = "metrics.csv"  # a run's training log, a row every `log_every` steps
VALIDATION_CSV = "validation.csv"  # its held-out NLL, every `val_every` epochs
METRICS_FIELDS = [
    "step",
    "epoch",
    "loss",
    "accuracy",
    "lr",
    "ratio",
    "grad_norm",
    "tokens_per_s",
    "images_per_s",
    "elapsed_s",
]
# validation.csv: held-out NLL in the run's sampling order (val_loss) and in raster order
# (val_nll, the tables' column), every `val_every` epochs (rar.evaluation.heldout)
VAL_FIELDS = ["step", "epoch", "val_loss", "val_nll", "order"]

# SLURM states of a job that can still produce a result (submitit's `InfoWatcher.is_done` list
# plus the transient ones of `man squeue`); UNKNOWN is what sacct says before it knows the
# job, SUBMITTED what a record says before SLURM answers (rar.ops.launch).
LIVE_STATES = frozenset(
    [
        "SUBMITTED",
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "PREEMPTED",
        "READY",
        "UNKNOWN",
    ]
)
ENDED_WELL = frozenset({"COMPLETED", "FINISHED"})  # states of a job that did its work
LOST = "LOST"  # a record says the job is live, but its scheduler (or process) knows it not
UNKNOWN_GRACE_S = 120.0  # how long a fresh SLURM job may be unknown to sacct and squeue
RATE_WINDOW = 20  # metrics.csv rows behind the ETA's throughput


# ##########################################################################################
# The failure record (written by rar.ops.launch and rar.training.loop, read by rar.ops.status and
# rar.report)
# ##########################################################################################

# What a SLURM end state means, in words a user acts on.
STATE_REASONS = {
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
    """One line saying why a job failed, from its exception or rar.ops.launch's error text (which
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
        return STATE_REASONS.get(state, f"job ended {state} without a result")
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
    return read_failure_file(Path(folder) / FAILURE_FILE)


def read_failure_file(path: Path) -> tuple[str, list[str], float] | None:
    """(reason, log paths, mtime) of the failure record `path`, or None where there is none."""
    try:
        text, mtime = path.read_text(), path.stat().st_mtime
    except OSError:
        return None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    logs = [ln[len("log:") :].strip() for ln in lines[1:] if ln.startswith("log:")]
    return (lines[0] if lines else "no reason recorded"), logs, mtime


# ##########################################################################################
# The training logs: metrics.csv and validation.csv (written by rar.training.loop and
# rar.training.watch)
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


def _fmt(x) -> str:
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def log_text(path: Path) -> str | None:
    """A training log's complete lines: a last line without its newline is being appended
    now (or was cut off), and is dropped. None if the file cannot be read."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    return text if text.endswith("\n") else text[: text.rfind("\n") + 1]


def log_rows(path: Path) -> list[dict[str, str]]:
    """A training log's complete rows as {column: text}; none if the file cannot be read."""
    return list(csv.DictReader((log_text(path) or "").splitlines()))


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
    """Parse metrics.csv (METRICS_FIELDS). A torn last line (being appended now) and rows that
    do not parse are skipped; each job restarts `elapsed_s` at 0, so the time used is the sum
    of each job's last value."""
    rows = []
    for r in log_rows(path):
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
    the training log line's (rar.training.loop)."""
    if len(points) < 2:
        return None
    d_epoch, d_time = points[-1][0] - points[0][0], points[-1][1] - points[0][1]
    return d_epoch / d_time if d_epoch > 0 and d_time > 0 else None


def eta_seconds(epoch: float, target_epoch: float, rate: float | None) -> float | None:
    """Seconds until `target_epoch` at `rate` epochs/s (`epochs_per_second`); None if unknown."""
    return max(0.0, target_epoch - epoch) / rate if rate else None


def job_record_for(out: Path) -> Path:
    """The job record of a stage that writes `out`: `samples.npz` -> `samples_job.json`."""
    return out.with_name(f"{out.stem}_{JOB_RECORD}")


def write_record(path: Path, entry: dict[str, Any]) -> None:
    """Write a job record (rar.ops.launch): indented JSON in the entry's key order, atomically."""
    atomic_write_text(path, json.dumps(entry, indent=2) + "\n")


def load_record(path: Path, *, quiet: bool = False) -> Any:
    """A job record as written; None if absent or unreadable (said, unless `quiet`)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        if not quiet:
            print(f"ignoring unreadable job record {path}: {err}", flush=True)
        return None


def read_record(path: Path) -> dict[str, Any] | None:
    """A job record (rar.ops.launch), with its file's mtime as `_mtime`; None if absent or
    unreadable."""
    record = load_record(path, quiet=True)
    if not isinstance(record, dict):
        return None
    try:
        record["_mtime"] = path.stat().st_mtime
    except OSError:
        return None
    return record


def record_gpus(record: dict[str, Any] | None) -> int:
    """GPUs a job held: its `gpus` (0 for a CPU job) as rar.ops.launch records it; in a record
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


_NAMED = re.compile(r"^epoch_([0-9]+(?:\.[0-9]+)?)\.pt$")


def checkpoint_name(epoch: float | None = None) -> str:
    """The file name of a run's checkpoint at `epoch` (`epoch_<E>.pt`), or of its end (None:
    `final.pt`), in its `checkpoints/` folder."""
    return "final.pt" if epoch is None else f"epoch_{epoch:g}.pt"


@dataclass(frozen=True)
class RunOnDisk:
    """What a run's folder shows: the epochs of its named checkpoints (`epoch_<E>.pt`), and
    the furthest epoch it is known to have trained to (0: not started)."""

    kept: frozenset[float] = frozenset()
    reached: float = 0.0

    def passed(self, epoch: float) -> bool:
        """Whether the run trained beyond `epoch` without keeping a checkpoint there."""
        return epoch < self.reached and epoch not in self.kept


NOTHING = RunOnDisk()


def run_on_disk(run_dir: str | Path, epochs: float) -> RunOnDisk:
    """A run's named checkpoints and how far it got: its last named checkpoint, `final.pt`
    (its end, `epochs`), or the last row of its `metrics.csv` (a job in flight, or one that
    stopped between two checkpoints), whichever is furthest."""
    folder = Path(run_dir)
    ckpts = folder / "checkpoints"
    names = [p.name for p in ckpts.iterdir()] if ckpts.is_dir() else []
    kept = frozenset(float(m[1]) for m in map(_NAMED.match, names) if m)
    reached = max(kept, default=0.0)
    if "final.pt" in names:
        reached = epochs
    logged = read_progress(folder / METRICS_CSV).epoch
    return RunOnDisk(kept, max(reached, logged or 0.0))
