"""rar.experiments.records: failure records, progress and the ETA, job records and job states (SLURM
answers faked with a dict, local processes with real pids). Torch- and submitit-free."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rar.experiments.records import (
    FAILURE_FILE,
    LOST,
    METRICS_FIELDS,
    UNKNOWN_GRACE_S,
    clear_failure,
    epochs_per_second,
    eta_seconds,
    failure_reason,
    format_duration,
    job_info,
    query_slurm,
    read_failure,
    read_progress,
    read_record,
    record_gpus,
    record_processes,
    write_failure,
)

FIELDS = ",".join(METRICS_FIELDS)


# -- the failure record ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            FloatingPointError("non-finite loss (nan) at step 7 (epoch 0.1); last is x"),
            "non-finite loss at step 7",
        ),
        (MemoryError(), "out of memory: MemoryError:"),
        (
            "job 5 (train_x) failed:\nTraceback:\n  ...\ntorch.OutOfMemoryError: CUDA out of "
            "memory. Tried to allocate 2 GiB",
            "out of memory: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB",
        ),
        (
            "job 5 (train_x) failed:\nsubmitit.core.utils.UncompletedJobError: Job not requeued "
            "because: timed-out too many times.",
            "time limit reached with no requeue left (submitit: timed-out too many times)",
        ),
        (
            "job 5 (train_x) ended NODE_FAIL without a result\nno log in /x",
            "node failure (SLURM state NODE_FAIL)",
        ),
        (
            "job 5 (train_x) ended UNKNOWN without a result\nno log in /x",
            "job gone: neither the scheduler nor a result knows it",
        ),
        (ValueError("bad\nsecond line"), "ValueError: bad"),
    ],
)
def test_failure_reasons(error, reason):
    assert failure_reason(error) == reason


def test_a_long_reason_is_cut_to_one_line():
    reason = failure_reason(RuntimeError("x" * 1000 + "\nsecond"))
    assert "\n" not in reason and len(reason) == 300 and reason.endswith("...")


def test_a_failure_record_round_trips_and_is_cleared(tmp_path):
    path = write_failure(tmp_path, ValueError("bad value"), ["a.log", "", "a.log", "b.log"])
    assert path == tmp_path / FAILURE_FILE
    reason, logs, mtime = read_failure(tmp_path)
    assert (reason, logs) == ("ValueError: bad value", ["a.log", "b.log"])  # once each
    assert mtime == path.stat().st_mtime
    clear_failure(tmp_path)
    assert read_failure(tmp_path) is None
    clear_failure(tmp_path)  # nothing to clear: no error
    (tmp_path / FAILURE_FILE).write_text("\n\n")
    assert read_failure(tmp_path)[0] == "no reason recorded"


# -- progress and the ETA ----------------------------------------------------------------------


def write_metrics(path: Path, rows: list[tuple[float, float]]) -> Path:
    """metrics.csv rows of (epoch, elapsed_s)."""
    lines = [FIELDS] + [f"{i},{e},1.0,0,0,0.5,1,1,1,{t}" for i, (e, t) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_progress_skips_a_torn_last_line(tmp_path):
    (tmp_path / "metrics.csv").write_text(f"{FIELDS}\n10,0.5,5,0,0,1,1,1,1,10\n20,1.0,4,0,0")
    progress = read_progress(tmp_path / "metrics.csv")
    assert (progress.epoch, progress.elapsed_s, progress.epochs_per_s) == (0.5, 10.0, None)


def test_progress_sums_the_time_of_every_job_and_rates_the_last(tmp_path):
    # job 1: epochs 0.1-0.2 in 100 s; job 2 resumes (elapsed restarts): 0.3-0.5 in 40 s
    path = write_metrics(tmp_path / "m.csv", [(0.1, 50), (0.2, 100), (0.3, 10), (0.5, 50)])
    progress = read_progress(path)
    assert progress.epoch == 0.5 and progress.elapsed_s == 150.0
    assert progress.epochs_per_s == pytest.approx(0.2 / 40)
    assert read_progress(tmp_path / "missing.csv").epoch is None


def test_eta_arithmetic():
    assert epochs_per_second([(0.0, 0.0)]) is None
    assert epochs_per_second([(1.0, 10.0), (1.0, 20.0)]) is None  # no progress
    assert epochs_per_second([(1.0, 10.0), (3.0, 20.0)]) == 0.2
    assert eta_seconds(1.0, 3.0, 0.5) == 4.0
    assert eta_seconds(4.0, 3.0, 0.5) == 0.0 and eta_seconds(1.0, 3.0, None) is None
    assert [format_duration(s) for s in (None, 30, 420, 3 * 3600 + 60, 2 * 86400 + 3 * 3600)] == [
        "-",
        "<1m",
        "7m",
        "3h01m",
        "2d3h",
    ]


# -- job records and job states ----------------------------------------------------------------


def test_a_job_record_is_read_with_its_time_and_a_bad_one_is_none(tmp_path):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"job_id": "7", "backend": "slurm", "tasks": 4}))
    record = read_record(path)
    assert record["job_id"] == "7" and record["_mtime"] == path.stat().st_mtime
    assert (record_gpus(record), record_processes(record)) == (4, 4)  # no `gpus`: one per task
    assert record_gpus({**record, "gpus": 0}) == 0  # a CPU job
    assert (record_gpus(None), record_processes(None)) == (1, 1)
    path.write_text("[1, 2]")
    assert read_record(path) is None
    assert read_record(tmp_path / "missing.json") is None


def slurm_record(state: str, mtime: float, **extra) -> dict:
    return {"job_id": "42", "backend": "slurm", "state": state, "_mtime": mtime, **extra}


def test_slurm_answers_replace_the_records_state():
    now = time.time()
    info = job_info(slurm_record("PENDING", now, requeues=1), {"42": ("RUNNING", 2)}, now)
    assert (info.state, info.requeues, info.verified, info.live) == ("RUNNING", 2, True, True)
    # without SLURM tools the record is shown, unverified
    info = job_info(slurm_record("RUNNING", now), None, now)
    assert (info.state, info.verified) == ("RUNNING", False)
    # unknown to SLURM: a fresh job is given a grace period, an old one is lost
    assert job_info(slurm_record("RUNNING", now), {}, now).state == "RUNNING"
    old = now - UNKNOWN_GRACE_S - 1
    assert job_info(slurm_record("RUNNING", old), {}, now).state == LOST
    assert job_info(slurm_record("COMPLETED", old), {}, now).state == "COMPLETED"
    assert job_info({"backend": "slurm"}, {}, now) is None and job_info(None, {}, now) is None


def test_a_local_job_is_lost_once_its_process_is_gone():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = time.time()
    record = {"job_id": f"pid-{dead.pid}", "backend": "debug", "state": "RUNNING"}
    assert job_info(record, None, now).state == LOST
    alive = {**record, "job_id": str(os.getpid())}
    assert job_info(alive, None, now).state == "RUNNING"
    elsewhere = {**record, "host": "another-node"}
    info = job_info(elsewhere, None, now)
    assert (info.state, info.verified) == ("RUNNING", False)


def test_without_slurm_tools_the_query_is_none(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert query_slurm(["1"]) is None


def test_sacct_and_squeue_are_asked_once_each(tmp_path, monkeypatch):
    """sacct lists each run of a job (requeues), squeue the ids sacct does not know yet."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for tool, out in (
        ("sacct", "5|REQUEUED\\n5|RUNNING\\n6|CANCELLED by 0\\n"),
        ("squeue", "7|PENDING\\n"),
    ):
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\nprintf "{out}"\n')
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    found = query_slurm(["5", "6", "7"])
    assert found == {"5": ("RUNNING", 1), "6": ("CANCELLED", 0), "7": ("PENDING", 0)}
    tools = [line.split()[0] for line in calls.read_text().splitlines()]
    assert tools == ["sacct", "squeue"]
    assert query_slurm([]) == {}
