"""The launcher: backends, job records, reattaching, failures, and requeue after a timeout.

The jobs train a tiny run on in-memory data (`train_tiny`), so each takes seconds. This module
is pickled by value (cloudpickle) into the jobs: tests/ is not a package the job could import.
Tests marked `slurm` submit to the local one-node cluster (.ci/run starts it; tests/conftest.py
skips them without one).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import cloudpickle
import helpers
import pytest
import torch
from helpers import SAMPLES, assert_same_weights, weights

from rar.data.batches import TensorBatchSource
from rar.ops.launch import LauncherConfig, LaunchError, TrainJob, launch
from rar.settings.training import TrainConfig
from rar.training.loop import load_checkpoint, train

# Jobs run in other processes (SLURM nodes, local workers), where tests/ is not importable:
# this module and the helpers it calls travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
cloudpickle.register_pickle_by_value(helpers)


def tiny_run(**overrides) -> TrainConfig:
    """helpers.tiny_run annealed over the first epoch: 8 steps per epoch, 24 in all."""
    return helpers.tiny_run(**{"anneal_start": 0, "anneal_end": 1, **overrides})


class SlowSource(TensorBatchSource):
    """In-memory tokens, `sleep_s` per micro-batch: a run that outlasts a time limit."""

    def __init__(self, tokens, labels, *, seed: int, sleep_s: float) -> None:
        super().__init__(tokens, labels, seed=seed)
        self.sleep_s = sleep_s

    def batches(self, **kw):
        for batch in super().batches(**kw):
            time.sleep(self.sleep_s)
            yield batch


def tiny_source(sleep_s: float = 0.0) -> SlowSource:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(4, (SAMPLES,), generator=g)
    tokens = torch.randint(16, (SAMPLES, 16), generator=g)
    return SlowSource(tokens, labels, seed=0, sleep_s=sleep_s)


def train_tiny(workdir, *, should_stop, sleep_s=0.0, epochs=3) -> str:
    """The job under test; one thread, so every process computes bit-identical weights."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        final = train(
            tiny_run(epochs=epochs),
            workdir,
            source=tiny_source(sleep_s),
            device="cpu",
            should_stop=should_stop,
        )
    finally:
        torch.set_num_threads(threads)
    return str(final)


def failing_job(*, should_stop, message: str) -> None:
    """A job that fails at once (and imports no torch, so its process starts fast)."""
    raise ValueError(message)


def double(x: int) -> int:
    return 2 * x


def record_of(path: Path) -> dict:
    return json.loads(path.read_text())


# -- settings -------------------------------------------------------------------------------


def test_launcher_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) partion"):
        LauncherConfig.from_dict({"partion": "gpu"})
    with pytest.raises(ValueError, match="key 'backend' must be one of debug, local, slurm"):
        LauncherConfig.from_dict({"backend": "auto"})
    with pytest.raises(ValueError, match="key 'gpus_per_node' must be int, got 'two'"):
        LauncherConfig.from_dict({"gpus_per_node": "two"})
    with pytest.raises(ValueError, match=r"key 'signal_delay_s' .* must be shorter"):
        LauncherConfig.from_dict({"backend": "slurm", "time_min": 1, "signal_delay_s": 60})
    path = tmp_path / "launcher.yaml"
    path.write_text("backend: slurm\npartition: gpu\ngpus_per_node: 8\nmem_gb: 64\nextra: {x: 1}\n")
    cfg = LauncherConfig.load(path)
    assert (cfg.backend, cfg.tasks, cfg.mem_gb, cfg.extra) == ("slurm", 8, 64.0, {"x": 1})
    assert cfg.override(partition=None, time_min=30).time_min == 30  # None keeps the value
    path.write_text("nodes: 0\n")
    with pytest.raises(ValueError, match=r"launcher.yaml: key 'nodes' must be at least 1"):
        LauncherConfig.load(path)


def test_slurm_without_sbatch_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM commands here
    cfg = LauncherConfig(backend="slurm", folder=str(tmp_path / "logs"), time_min=5)
    with pytest.raises(LaunchError, match=r"slurm backend needs SLURM's sbatch.*on the PATH"):
        launch(print, "x", launcher=cfg, record=tmp_path / "job.json", name="t")


# -- the job side ---------------------------------------------------------------------------


def test_checkpoint_stops_at_a_step_and_the_requeued_job_resumes(tmp_path, capsys):
    """What submitit's signal handler does, by hand: checkpoint() mid-run, then run the
    DelayedSubmission it returns; the requeued job resumes at the step the first one stopped
    at, trains no earlier step again, and ends with an uninterrupted run's weights."""
    ref = train_tiny(tmp_path / "ref", should_stop=lambda: False, epochs=2)
    job, out = TrainJob(train_tiny), {}
    worker = threading.Thread(
        target=lambda: out.update(r=job(tmp_path / "cut", sleep_s=0.05, epochs=2))
    )
    worker.start()
    metrics, deadline = tmp_path / "cut/metrics.csv", time.monotonic() + 120
    while not metrics.exists() or len(metrics.read_text().splitlines()) < 2:
        # the first logged step (4 of 16)
        assert worker.is_alive(), "the job ended before its first logged step"
        assert time.monotonic() < deadline, "no logged step in 120 s"
        time.sleep(0.05)
    delayed = job.checkpoint(tmp_path / "cut", sleep_s=0.05, epochs=2)
    worker.join()
    stopped_at = load_checkpoint(out["r"])["step"]
    assert Path(out["r"]).name == "last.pt" and 4 <= stopped_at < 16
    assert isinstance(delayed.function, TrainJob) and delayed.function.requeues == 1
    capsys.readouterr()
    done = delayed.result()  # the requeued job
    assert Path(done).name == "final.pt"
    log = capsys.readouterr().out
    assert f"resuming from {out['r']} at step {stopped_at}" in log
    logged = [int(s) for s in re.findall(r"^step (\d+)/16 ", log, re.MULTILINE)]
    assert logged == [s for s in (4, 8, 12, 16) if s > stopped_at]  # none trained twice
    assert_same_weights(weights(done), weights(ref))


def test_debug_backend_runs_in_process_and_records(tmp_path, capsys):
    cfg = LauncherConfig(backend="debug")
    out = launch(
        TrainJob(train_tiny),
        tmp_path / "run",
        epochs=1,
        launcher=cfg,
        record=tmp_path / "run/job.json",
        name="train_tiny",
    )
    assert Path(out).name == "final.pt"
    rec = record_of(tmp_path / "run/job.json")
    assert rec["backend"] == "debug" and rec["state"] == "COMPLETED"
    assert rec["command"].startswith("TrainJob(") and "epochs=1" in rec["command"]
    with pytest.raises(ValueError, match="boom"):  # debug: the job's own exception
        launch(
            TrainJob(failing_job),
            message="boom",
            launcher=cfg,
            record=tmp_path / "job.json",
            name="x",
        )
    assert record_of(tmp_path / "job.json")["state"] == "FAILED"


def test_local_job_failure_raises_with_its_traceback(tmp_path, capsys):
    """(A successful local run is in the reattach test below.)"""
    cfg = LauncherConfig(backend="local", folder=str(tmp_path / "logs"), poll_s=0.2)
    with pytest.raises(LaunchError, match=r"(?s)failed:.*ValueError: boom: the training diverged"):
        launch(
            TrainJob(failing_job),
            message="boom: the training diverged",
            launcher=cfg,
            record=tmp_path / "bad/job.json",
            name="train_bad",
        )
    rec = record_of(tmp_path / "bad/job.json")
    assert rec["backend"] == "local" and rec["state"] == "FAILED"
    assert Path(rec["folder"]).parent == tmp_path / "logs" and rec["job_id"] in rec["folder"]
    assert f"job {rec['job_id']} RUNNING" in capsys.readouterr().out


def test_a_recorded_job_that_is_gone_is_submitted_again(tmp_path, capsys):
    cfg = LauncherConfig(backend="local", folder=str(tmp_path / "logs"), poll_s=0.2)
    record = tmp_path / "job.json"
    gone = dict(
        backend="local",
        job_id="1",
        name="double",
        command="__main__.double(21)",
        folder=str(tmp_path / "logs/1"),
        tasks=1,
        state="RUNNING",
    )
    record.write_text(json.dumps(gone))  # pid 1 is no submitit controller: the job is gone
    assert launch(double, 21, launcher=cfg, record=record, name="double") == 42
    assert "job 1 recorded in" in capsys.readouterr().out
    assert record_of(record)["job_id"] != "1" and record_of(record)["state"] == "COMPLETED"


def write_answer(path: str) -> int:
    Path(path).write_text("42")
    return 42


def test_a_finished_job_is_taken_only_while_its_outputs_exist(tmp_path, capsys):
    """A finished job of the same call is taken as done (no second job) while what it wrote is
    there; once an output is gone (deleted by hand, or by Snakemake as incomplete) the call
    runs again instead of returning a result whose file is missing."""
    cfg = LauncherConfig(backend="local", folder=str(tmp_path / "logs"), poll_s=0.2)
    record, out = tmp_path / "job.json", tmp_path / "answer.txt"
    call = dict(launcher=cfg, record=record, name="answer", outputs=[out])
    assert launch(write_answer, str(out), **call) == 42
    first = record_of(record)["job_id"]
    assert launch(write_answer, str(out), **call) == 42
    assert record_of(record)["job_id"] == first
    assert "has finished; taking its result" in capsys.readouterr().out
    out.unlink()
    assert launch(write_answer, str(out), **call) == 42
    assert f"finished, but its output {out} is gone" in capsys.readouterr().out
    assert record_of(record)["job_id"] != first and out.read_text() == "42"


# -- reattaching after the launching process died ---------------------------------------------

_LAUNCHER = textwrap.dedent(
    """
    import sys, cloudpickle
    from rar.ops.launch import launch
    with open(sys.argv[1], "rb") as f:
        fn, args, kwargs, options = cloudpickle.load(f)
    launch(fn, *args, **kwargs, **options)
    """
)


def launcher_process(tmp_path, fn, *args, **kwargs) -> subprocess.Popen:
    """`launch(fn, *args, **kwargs)` in a separate process, as `rar train` would run it."""
    options = {k: kwargs.pop(k) for k in ("launcher", "record", "name")}
    call = tmp_path / "call.pkl"
    call.write_bytes(cloudpickle.dumps((fn, args, kwargs, options)))
    log = (tmp_path / "launcher.log").open("w")
    return subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, str(call)], stdout=log, stderr=subprocess.STDOUT
    )


def wait_for_state(record: Path, states: set[str], timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if record.exists() and record_of(record).get("state") in states:
            return record_of(record)
        time.sleep(0.1)
    raise AssertionError(f"{record} never reached {states}")


def slurm_config(tmp_path, **overrides) -> LauncherConfig:
    """The local cluster: partition debug, one CPU, no GPUs (the node has none)."""
    base = dict(
        backend="slurm",
        folder=str(tmp_path / "logs"),
        partition="debug",
        time_min=5,
        cpus_per_task=1,
        mem_gb=1,
        signal_delay_s=30,
        poll_s=1,
    )
    return LauncherConfig(**{**base, **overrides})


@pytest.mark.parametrize(
    "backend",
    ["local", pytest.param("slurm", marks=[pytest.mark.slurm, pytest.mark.slow])],
)
def test_relaunch_reattaches_to_the_live_job(tmp_path, capsys, backend):
    """Kill the launching process while its job runs; a new launch reattaches (same job id,
    no second job), takes the result, and a third launch reuses the finished job's result."""
    name = f"reattach_{backend}_{os.getpid()}"
    cfg = (
        slurm_config(tmp_path)
        if backend == "slurm"
        else LauncherConfig(backend="local", folder=str(tmp_path / "logs"), poll_s=0.2)
    )
    record, workdir = tmp_path / "run/job.json", tmp_path / "run"
    # The job outlives the launcher's start-up and kill: 5 s of imports, then 16 x sleep_s.
    job_args = dict(sleep_s=0.1 if backend == "local" else 0.5, epochs=1)
    proc = launcher_process(
        tmp_path, TrainJob(train_tiny), workdir, **job_args, launcher=cfg, record=record, name=name
    )
    first = wait_for_state(record, {"RUNNING"})
    proc.kill()
    proc.wait()
    assert not (workdir / "checkpoints/final.pt").exists()  # the job still runs

    out = launch(TrainJob(train_tiny), workdir, **job_args, launcher=cfg, record=record, name=name)
    assert Path(out).name == "final.pt"
    log = capsys.readouterr().out
    assert f"reattaching to job {first['job_id']}" in log and "submitted" not in log
    assert record_of(record)["job_id"] == first["job_id"]
    assert record_of(record)["state"] == "COMPLETED"

    again = launch(
        TrainJob(train_tiny), workdir, **job_args, launcher=cfg, record=record, name=name
    )
    assert again == out and "taking its result" in capsys.readouterr().out
    if backend == "slurm":
        ids = subprocess.run(
            ["sacct", "-X", "-n", "-P", "--name", name, "-o", "JobID", "-S", "now-1hours"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert ids == [first["job_id"]]


# -- SLURM ----------------------------------------------------------------------------------


@pytest.mark.slurm
def test_slurm_runs_a_training_job_and_reports_a_failure(tmp_path, capsys):
    cfg = slurm_config(tmp_path)
    out = launch(
        TrainJob(train_tiny),
        tmp_path / "run",
        epochs=1,
        launcher=cfg,
        record=tmp_path / "run/job.json",
        name="train_tiny",
    )
    assert Path(out).name == "final.pt" and Path(out).exists()
    rec = record_of(tmp_path / "run/job.json")
    assert rec["backend"] == "slurm" and rec["state"] == "COMPLETED"
    # The states the launcher's polling saw, in order: a short job can go from PENDING to
    # COMPLETED between two polls, so RUNNING may or may not be among them.
    seen = re.findall(rf"^job {rec['job_id']} ([A-Z]+)$", capsys.readouterr().out, re.MULTILINE)
    assert seen[-1] == "COMPLETED" and set(seen) <= {"PENDING", "RUNNING", "COMPLETED"}

    with pytest.raises(LaunchError, match=r"(?s)failed:.*ValueError: boom: the training diverged"):
        launch(
            TrainJob(failing_job),
            message="boom: the training diverged",
            launcher=cfg,
            record=tmp_path / "bad/job.json",
            name="train_bad",
        )


def _signal_then_release(record: Path, stop: threading.Event, *, after: str) -> None:
    """Play SLURM's part in a time-out, on a clock the test controls: once the job's log
    shows `after`, send USR2 to its steps (what `--signal=USR2@N` sends N s before the time
    limit, and a preemption sends at once); then start the requeued job (helpers.py)."""
    signalled, releaser = False, helpers.RequeueReleaser()
    while not stop.wait(0.5):
        if not record.exists():
            continue
        rec = record_of(record)
        job_id, log = rec["job_id"], Path(rec["folder"]) / f"{rec['job_id']}_0_log.out"
        if not signalled and log.exists() and after in log.read_text():
            subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
            signalled = True
        releaser.poll(job_id)


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_usr2_requeues_and_resumes_bit_identically(tmp_path, capsys):
    """The job asks SLURM for USR2 40 s before its time limit; on that signal it saves
    last.pt, is requeued, and the requeued job resumes and ends with the weights of an
    uninterrupted run.

    The test sends the signal itself, mid-run, rather than waiting for the time limit: SLURM
    sends `--signal` only to within its 60 s event resolution, so under a 1-minute test limit
    it can arrive before the job's Python has installed its handler, and the job dies of it
    (CI saw exactly that). Under real limits of hours the window is irrelevant."""
    ref = train_tiny(tmp_path / "ref", should_stop=lambda: False)
    cfg = slurm_config(tmp_path, time_min=5, signal_delay_s=40, max_requeues=6)
    record, stop = tmp_path / "run/job.json", threading.Event()
    operator = threading.Thread(
        target=_signal_then_release,
        args=(record, stop),
        kwargs={"after": "step 4/24"},
        daemon=True,
    )
    operator.start()
    try:
        out = launch(
            TrainJob(train_tiny),
            tmp_path / "run",
            sleep_s=0.3,
            launcher=cfg,
            record=record,
            name="train_usr2",
        )
    finally:
        stop.set()
    rec = record_of(record)
    assert rec["requeues"] == 1 and rec["state"] == "COMPLETED"
    assert f"job {rec['job_id']} requeued" in capsys.readouterr().out
    assert_same_weights(weights(out), weights(ref))
    folder = Path(rec["folder"])
    assert "#SBATCH --signal=USR2@40" in (folder / f"{rec['job_id']}_submission.sh").read_text()
    job_log = (folder / f"{rec['job_id']}_0_log.out").read_text()
    assert "stop signal: saving last.pt" in job_log and "resuming from" in job_log


# -- the command line -----------------------------------------------------------------------


def test_rar_train_launcher_flags_fail_clearly(tmp_path, monkeypatch, capsys):
    from rar.cli import main

    bad = tmp_path / "launcher.yaml"
    bad.write_text("backend: slurm\ngpus: 2\n")
    argv = ["train", "--config", "c.yaml", "--workdir", str(tmp_path / "run")]
    assert main([*argv, "--launcher-config", str(bad)]) == 2
    assert "launcher.yaml: unknown key(s) gpus" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM commands here
    assert main([*argv, "--launcher", "slurm", "--time-min", "5"]) == 1
    assert "needs SLURM's sbatch" in capsys.readouterr().err


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """16 images of 2 classes tokenized by a small random MaskGIT-VQGAN (4x4 grid, 64 codes)."""
    import numpy as np
    from PIL import Image

    from rar.data.tokenize import tokenize_images
    from rar.model.tokenizer import MaskGITVQGAN, MaskGITVQGANConfig

    root = tmp_path_factory.mktemp("images") / "train"
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"n0{c}").mkdir(parents=True)
        for i in range(8):
            small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
            Image.fromarray(small).resize((64, 64)).save(root / f"n0{c}" / f"{i}.png")
    torch.manual_seed(0)
    cfg = MaskGITVQGANConfig(hidden_channels=32, image_size=64, z_channels=32, codebook_size=64)
    out = tmp_path_factory.mktemp("shards") / "tiny"
    tokenize_images(
        root,
        out,
        tokenizer=MaskGITVQGAN(cfg).eval(),
        crop="center",
        images_per_part=16,
        num_workers=0,
        progress=False,
        batch_size=4,
    )
    return out


@pytest.mark.slurm
def test_rar_train_through_slurm_on_shards(tmp_path, shards, capsys):
    """`rar train --launcher slurm`: the default TrainJob (rar.training.loop.run) on real shards."""
    from rar.cli import main

    run = tiny_run(
        data=str(shards),
        codebook_size=64,
        num_classes=2,
        source_images=16,
        epochs=2,
        data_workers=0,
    )
    run.save(tmp_path / "config.yaml")
    launcher = tmp_path / "launcher.yaml"
    launcher.write_text(f"backend: slurm\nfolder: {tmp_path / 'logs'}\ntime_min: 5\npoll_s: 1\n")
    argv = ["train", "--config", str(tmp_path / "config.yaml"), "--workdir", str(tmp_path / "run")]
    flags = ["--launcher-config", str(launcher), "--partition", "debug", "--cpus-per-task", "1"]
    assert main([*argv, *flags, "--mem-gb", "2"]) == 0
    assert (tmp_path / "run/checkpoints/final.pt").exists()
    rec = record_of(tmp_path / "run/job.json")
    assert rec["backend"] == "slurm" and rec["name"] == "train_run"
    assert "done: " in capsys.readouterr().out
