"""One launcher for every heavy stage (tokenize, train, sample, evaluate), through submitit.

`launch(fn, *args, launcher=..., record=..., name=...)` runs `fn(*args, **kwargs)` as a job of
one backend, chosen by the config or profile and never guessed from the PATH (submitit's
AutoExecutor picks SLURM whenever `srun` exists, so each executor class is named explicitly):

- `slurm`: an sbatch job (one task per GPU), submitted with `submitit.SlurmExecutor`;
- `local`: a subprocess on this machine (`submitit.LocalExecutor`; several GPUs = several
  processes);
- `debug`: in-process, no pickling (the default of `rar train`).

The launching process records the job in `record` (a run's `job.json`), streams its state
changes to its log, returns the job's result, and raises `LaunchError` with the job's error when
it fails, so a Snakemake rule that waits on it fails too. Started again (a rerun of Snakemake
after the launcher died) it reattaches to the recorded job while that job is alive, or takes its
result when it finished, and submits a new job only when the old one is gone without one.

`TrainJob` makes a training function checkpointable: on SLURM's USR2 (sent `signal_delay_s`
before the time limit) or a preemption it stops at the next step boundary, saves `last.pt`, and
requeues itself, at most `max_requeues` times; the requeued job resumes from `last.pt`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import JobPaths, pickle_load
from submitit.local.local import LocalJob

from rar.experiments.records import (
    FAILURE_FILE,
    LIVE_STATES,
    UNKNOWN_GRACE_S,
    clear_failure,
    load_record,
    stdout_log,
    write_failure,
    write_record,
)
from rar.settings.stages import LauncherConfig


class LaunchError(RuntimeError):
    """The job could not be submitted, or it ended without a result (the message says why:
    its first line, then the job's traceback or the end of its log). `log`: the job's stderr
    file, when there is one (`rar` prints it beside the one-line error)."""

    def __init__(self, message: str, *, log: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.log = str(log) if log else None


# ##########################################################################################
# The job side: checkpointable training
# ##########################################################################################


class TrainJob(submitit.helpers.Checkpointable):
    """Run `fn(*args, should_stop=..., **kwargs)` so that a SLURM signal stops it cleanly.

    fn: a training function that polls `should_stop()` after every optimizer step and, when it
        is True, saves `last.pt` and returns (`rar.training.loop.run`, the default, and
        `rar.training.loop.train` do). It must resume from `last.pt` when called again.

    submitit calls `checkpoint()` synchronously in its USR2 handler on the main thread and exits
    (requeueing the job) right after it returns. So the training runs in a worker thread while
    the main thread waits in short `join`s, staying free to run that handler; `checkpoint()`
    sets the stop event, waits for the worker to save `last.pt`, and returns a fresh TrainJob
    for the requeued job. In a multi-task job submitit runs the handler on rank 0 only; the
    other ranks stop at the same step because the loop all-reduces the stop flag.
    """

    def __init__(self, fn: Callable[..., Any] | None = None, *, requeues: int = 0) -> None:
        self.fn = fn
        self.requeues = requeues  # how many times this job was requeued before this run
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outcome: dict[str, Any] = {}

    def __repr__(self) -> str:  # stable: it goes into job.json's "command"
        return f"TrainJob({_describe(self.fn or 'rar.training.loop.run')})"

    def __getstate__(self) -> dict[str, Any]:
        return {"fn": self.fn, "requeues": self.requeues}  # events and threads do not pickle

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["fn"], requeues=state["requeues"])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fn = self.fn
        if fn is None:
            from rar.training.loop import run as fn  # heavy import (torch), inside the job only
        _export_distributed_env()
        if self.requeues:
            print(f"requeued {self.requeues} time(s): resuming", flush=True)

        def work() -> None:
            try:
                self._outcome["result"] = fn(*args, should_stop=self._stop.is_set, **kwargs)
            except BaseException as err:  # re-raised on the main thread below
                self._outcome["error"] = err

        self._thread = threading.Thread(target=work, name="rar-train", daemon=True)
        self._thread.start()
        try:
            while self._thread.is_alive():
                self._thread.join(timeout=0.5)  # short: signal handlers run between joins
        except KeyboardInterrupt:  # local cancel / Ctrl-C: save last.pt before leaving
            self._stop.set()
            self._thread.join()
            raise
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["result"]

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on USR2: stop at the next step, wait for `last.pt`, requeue."""
        if self._thread is not None:
            print("stop signal: saving last.pt at the end of this step", flush=True)
            self._stop.set()
            self._thread.join()
            if "error" in self._outcome:  # a crash is a failure, not something to requeue
                raise self._outcome["error"]
        fresh = TrainJob(self.fn, requeues=self.requeues + 1)
        return submitit.helpers.DelayedSubmission(fresh, *args, **kwargs)


def _export_distributed_env() -> None:
    """MASTER_ADDR/PORT, RANK, WORLD_SIZE for torch.distributed in a multi-task job.

    Each task keeps every GPU of its node visible: rar.training.loop picks `cuda:{LOCAL_RANK}`."""
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (debug backend)
        return
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=False, overwrite=True
        )


# ##########################################################################################
# The launching side: submit or reattach, wait, report
# ##########################################################################################


def launch(
    fn: Callable[..., Any],
    *args: Any,
    launcher: LauncherConfig,
    record: str | Path,
    name: str,
    outputs: Sequence[str | Path] = (),
    **kwargs: Any,
) -> Any:
    """Run `fn(*args, **kwargs)` on `launcher.backend`, wait for it, and return its result.

    record: the job's record (`job.json` in the run directory), written atomically; the key to
        reattaching when the launching process is started again.
    name: the stage, e.g. "train_<run id>" (the SLURM job name; a record of another name is
        never reattached).
    outputs: the files the call leaves. A recorded job of the same call that finished is taken
        as done only while they all exist: one deleted since (by hand, or by Snakemake as an
        incomplete output) runs the call again, which redoes only what is missing.
    Raises LaunchError when the job cannot be submitted or ends without a result.
    """
    record = Path(record)
    arguments = [*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())]
    command = f"{_describe(fn)}({', '.join(arguments)})"
    job = entry = None
    if launcher.backend != "debug":
        # Outside the failure record: a live job of another call is this call's error, and
        # that job may still succeed.
        job, entry = _reattach(
            record, launcher=launcher, name=name, command=command, outputs=outputs
        )
    try:
        if launcher.backend == "debug":
            result = _run_in_process(fn, args, kwargs, record=record, name=name, command=command)
        else:
            if job is None:
                job, entry = _submit(
                    fn, args, kwargs, launcher=launcher, name=name, command=command
                )
                _write_record(record, entry)
                print(
                    f"job {job.job_id} submitted ({launcher.backend}); logs in {entry['folder']}",
                    flush=True,
                )
            result = _wait(job, entry, record=record, poll_s=launcher.poll_s)
    except Exception as err:  # not KeyboardInterrupt: a cancelled wait is no failed job
        _record_failure(record, err)
        raise
    clear_failure(record.parent)  # this attempt succeeded: an earlier one's reason is stale
    return result


def _record_failure(record: Path, err: Exception) -> None:
    """`failure.txt` beside the job record (`rar status`, the tables): the reason, and the
    logs to read: this process's (the Snakemake rule's log) and the job's own stderr."""
    logs = [stdout_log()]
    entry = load_record(record) or {}
    if entry.get("folder") and entry.get("job_id"):
        with contextlib.suppress(Exception):  # best effort: the reason matters more
            logs.append(str(JobPaths(entry["folder"], job_id=entry["job_id"]).stderr))
    try:
        write_failure(record.parent, err, logs=[p for p in logs if p])
    except OSError as write_err:  # never hide the job's error behind this one
        print(f"could not write {record.parent / FAILURE_FILE}: {write_err}", flush=True)


def _describe(fn: Any) -> str:
    if isinstance(fn, str):
        return fn
    if isinstance(fn, TrainJob):
        return repr(fn)
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _write_record(path: Path, entry: dict[str, Any]) -> None:
    write_record(path, {**entry, "updated": _now()})


def _run_in_process(fn, args, kwargs, *, record: Path, name: str, command: str) -> Any:
    """The debug backend: a plain call, so breakpoints and tracebacks work as usual."""
    entry = dict(
        backend="debug",
        job_id=f"pid-{os.getpid()}",
        name=name,
        command=command,
        submitted=_now(),
        folder=None,
        tasks=1,
        requeues=0,
        state="RUNNING",
    )
    # The GPUs it uses (`rar status` labels its hours GPU-h or CPU-h); a device that does not
    # resolve is left to the stage to report.
    with contextlib.suppress(RuntimeError, ValueError, TypeError):
        if "device" in kwargs:
            entry["gpus"] = _in_process_gpus(kwargs["device"])
    _write_record(record, entry)
    print(f"job {entry['job_id']} RUNNING (debug: in-process)", flush=True)
    try:
        result = fn(*args, **kwargs)
    except BaseException:
        _write_record(record, {**entry, "state": "FAILED"})
        raise
    _write_record(record, {**entry, "state": "COMPLETED"})
    return result


def _in_process_gpus(device: Any) -> int:
    """GPUs an in-process job on `device` uses: every process of a torchrun (WORLD_SIZE) has
    one when the device resolves to CUDA, none otherwise."""
    from rar.runtime import resolve_device  # torch: the stage imports it anyway

    if resolve_device(device or "auto").type != "cuda":
        return 0
    return int(os.environ.get("WORLD_SIZE", "1"))


def _executor(launcher: LauncherConfig, name: str) -> submitit.Executor:
    """The executor class named by the backend, with the resources of the config."""
    folder = Path(launcher.folder).resolve() / "%j"
    job_name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    if launcher.backend == "local":
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=launcher.max_requeues)
        ex.update_parameters(
            timeout_min=launcher.time_min,
            gpus_per_node=launcher.gpus_per_node,
            tasks_per_node=launcher.tasks,
            signal_delay_s=launcher.signal_delay_s,
        )
        return ex
    missing = [tool for tool in ("sbatch", "srun", "sacct") if shutil.which(tool) is None]
    if missing:
        raise LaunchError(
            f"the slurm backend needs SLURM's {', '.join(missing)} on the PATH, and there is "
            "none on this machine; run on a SLURM login node, or choose the launcher backend "
            "'local' or 'debug' (rar ... --launcher local)"
        )
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=launcher.max_requeues)
    optional = dict(
        partition=launcher.partition,
        account=launcher.account,
        qos=launcher.qos,
        constraint=launcher.constraint,
        cpus_per_task=launcher.cpus_per_task,
        gpus_per_node=launcher.gpus_per_node or None,
        mem=None if launcher.mem_gb is None else f"{int(launcher.mem_gb * 1024)}MB",
        mail_user=launcher.mail_user,
        mail_type=launcher.mail_type,
    )
    ex.update_parameters(
        job_name=job_name,
        time=launcher.time_min,
        nodes=launcher.nodes,
        ntasks_per_node=launcher.tasks,
        signal_delay_s=launcher.signal_delay_s,
        additional_parameters=dict(launcher.extra),
        # a task that dies would leave the others waiting in a collective until NCCL's timeout
        srun_args=["--kill-on-bad-exit=1"] if launcher.tasks * launcher.nodes > 1 else [],
        **{k: v for k, v in optional.items() if v is not None},
    )
    return ex


def _submit(fn, args, kwargs, *, launcher: LauncherConfig, name: str, command: str):
    ex = _executor(launcher, name)
    # A job submitted from inside a SLURM job (or torchrun) must not inherit its variables.
    with submitit.helpers.clean_env():
        try:
            job = ex.submit(fn, *args, **kwargs)
        except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError) as err:
            raise LaunchError(f"submitting {name} to {launcher.backend} failed: {err}") from None
    entry = dict(
        backend=launcher.backend,
        job_id=str(job.job_id),
        name=name,
        command=command,
        submitted=_now(),
        folder=str(job.paths.folder),
        tasks=launcher.tasks * launcher.nodes,
        requeues=0,
        state="SUBMITTED",
        gpus=launcher.gpus_per_node * launcher.nodes,  # requested; 0: a CPU job
    )
    return job, entry


class _AdoptedLocalJob(LocalJob):
    """A local job started by an earlier launching process: alive while its controller is."""

    def get_info(self, mode: str = "force") -> dict[str, str]:
        if _is_local_controller(int(self.job_id), self.paths.folder):
            return {"jobState": "RUNNING"}
        return {"jobState": "FINISHED" if self.paths.result_pickle.exists() else "GONE"}


def _is_local_controller(pid: int, folder: Path) -> bool:
    """Whether `pid` is submitit's local controller of the job in `folder` (not a reused pid)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return False
    if "submitit.local._local" not in argv:
        return False
    return Path(argv[argv.index("submitit.local._local") + 1].replace("%j", str(pid))) == folder


def _job_handle(entry: dict[str, Any]) -> submitit.Job:
    tasks = list(range(int(entry.get("tasks", 1))))
    if entry["backend"] == "slurm":
        return submitit.SlurmJob(folder=entry["folder"], job_id=entry["job_id"], tasks=tasks)
    return _AdoptedLocalJob(folder=entry["folder"], job_id=entry["job_id"], tasks=tasks)


def _reattach(
    record: Path, *, launcher: LauncherConfig, name: str, command: str, outputs: Sequence
):
    """The recorded job, if it is alive, or finished this call and its outputs are all there;
    (None, None) when one must submit."""
    entry = load_record(record)
    if not entry or entry.get("backend") != launcher.backend or entry.get("name") != name:
        return None, None
    if launcher.backend == "slurm" and shutil.which("sacct") is None:
        return None, None  # cannot ask about it; _executor will explain what is missing
    job = _job_handle(entry)
    state, requeues = _state(job, entry)
    outcome = _outcome(job, int(entry.get("tasks", 1)))
    if state in LIVE_STATES and outcome is None and state != "UNKNOWN":
        if entry.get("command") != command:
            raise LaunchError(
                f"{record}: job {job.job_id} ({entry.get('command')}) is still {state}, and "
                f"this call would run {command}; wait for it or cancel it first"
            )
        print(f"reattaching to job {job.job_id} ({state}) recorded in {record}", flush=True)
        return job, {**entry, "requeues": max(requeues, entry.get("requeues", 0))}
    gone = [str(p) for p in outputs if not Path(p).exists()]
    if outcome is not None and outcome[0] == "success" and entry.get("command") == command:
        if not gone:
            print(
                f"job {job.job_id} recorded in {record} has finished; taking its result", flush=True
            )
            return job, entry
        why = f"finished, but its output {gone[0]} is gone"
    elif outcome is not None and outcome[0] == "success":
        why = "finished a different call"
    else:
        why = "failed" if outcome is not None and outcome[0] == "error" else f"is {state}"
    print(f"job {job.job_id} recorded in {record} {why}; submitting a new job", flush=True)
    return None, None


def _state(job: submitit.Job, entry: dict[str, Any]) -> tuple[str, int]:
    """(state, times requeued) of a job; SLURM's from sacct, falling back to squeue."""
    if entry["backend"] != "slurm":
        return job.get_info()["jobState"], 0
    sacct = ["sacct", "-j", str(job.job_id), "-X", "-n", "-P", "--duplicates", "-o", "State"]
    # One line per run of the job (--duplicates), oldest first: "CANCELLED by 0" -> CANCELLED.
    states = [s for s in _words_of(sacct, check=True) if s.isupper()]
    if states:
        return states[-1], len(states) - 1
    out = _words_of(["squeue", "-h", "-j", str(job.job_id), "-o", "%T"], check=False)
    return (out[0] if out else "UNKNOWN"), 0


def _words_of(cmd: list[str], *, check: bool) -> list[str]:
    """The words a SLURM query prints; none when it cannot run (or, with `check`, fails)."""
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=check)
    except (OSError, subprocess.SubprocessError):
        return []
    return run.stdout.split()


def _outcome(job: submitit.Job, tasks: int) -> tuple[str, Any] | None:
    """("success", rank 0's result) or ("error", the tracebacks), once rank 0 wrote its result
    or any task wrote an error; None before. (Ranks > 0 return early when the job is requeued,
    so their results alone mean nothing.)"""
    outcomes = {}
    for task in range(tasks):
        path = JobPaths(job.paths.folder, job_id=job.job_id, task_id=task).result_pickle
        if path.exists():
            # a result being written right now is read at the next poll
            with contextlib.suppress(OSError, EOFError, pickle.UnpicklingError):
                outcomes[task] = pickle_load(path)
    errors = [(t, v) for t, (o, v) in outcomes.items() if o == "error"]
    if errors:
        return "error", "\n".join(v if tasks == 1 else f"task {t}:\n{v}" for t, v in errors)
    return outcomes.get(0)


def _log_tail(job: submitit.Job, lines: int = 30) -> str:
    for path in (job.paths.stderr, job.paths.stdout):
        if path.exists() and path.stat().st_size:
            return f"last lines of {path}:\n" + "\n".join(path.read_text().splitlines()[-lines:])
    return f"no log in {job.paths.folder}"


def _wait(job: submitit.Job, entry: dict[str, Any], *, record: Path, poll_s: float) -> Any:
    """Poll the job until it ends, printing state changes; return its result or raise."""
    tasks = int(entry.get("tasks", 1))
    start, last_state = time.monotonic(), None
    while True:
        state, requeues = _state(job, entry)
        outcome = _outcome(job, tasks)
        if requeues > entry.get("requeues", 0):
            print(f"job {job.job_id} requeued ({requeues} so far)", flush=True)
            entry["requeues"] = requeues
        if state != last_state and state != "UNKNOWN":
            print(f"job {job.job_id} {state}", flush=True)
            _write_record(record, {**entry, "state": state})
            last_state = state
        if outcome is not None:
            break
        if state not in LIVE_STATES:
            # Ended without a result file: give a slow shared file system one more look.
            time.sleep(min(poll_s, 5.0))
            outcome = _outcome(job, tasks)
            break
        if state == "UNKNOWN" and time.monotonic() - start > UNKNOWN_GRACE_S:
            break
        time.sleep(poll_s)

    if outcome is not None and outcome[0] == "success":
        _write_record(record, {**entry, "state": "COMPLETED"})
        print(f"job {job.job_id} COMPLETED", flush=True)
        return outcome[1]
    _write_record(record, {**entry, "state": "FAILED"})
    if outcome is not None:
        # The job's traceback; its last line is the exception that stopped it.
        raise LaunchError(
            f"job {job.job_id} ({entry['name']}) failed:\n{outcome[1].rstrip()}",
            log=job.paths.stderr,
        )
    raise LaunchError(
        f"job {job.job_id} ({entry['name']}) ended {state} without a result\n{_log_tail(job)}",
        log=job.paths.stderr,
    )
