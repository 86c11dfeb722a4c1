"""`rar status` and the failure record, on a partly finished demo-scale grid built by hand.

The grid's files are written as the stages write them (config.yaml, metrics.csv, job records,
checkpoints, metrics.json); checkpoints are empty, since status only checks that they exist.
SLURM is faked with scripts on the PATH, or removed from it, so the tests run anywhere.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rar.experiments import CEILING, FLOOR, RECONSTRUCTED, estimate, load_study
from rar.experiments.records import FAILURE_FILE, LOST, METRICS_FIELDS, format_duration, query_slurm
from rar.ops.launch import LauncherConfig, LaunchError, launch
from rar.ops.status import Status, collect, format_status

REPO = Path(__file__).resolve().parents[1]
FIELDS = ",".join(METRICS_FIELDS)
DEAD_PID = 2**22 + 12345  # above the kernel's pid_max default: no such process


def study_config() -> dict:
    """config/demo.yaml with a small grid: two scratch runs, a trunk, a branch, and a table3 row
    (the anneal (4, 4) row makes the trunk a table run; (2, 3) branches from it at epoch 2)."""
    config = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    config["train"].update(epochs=4, anneal_start=2, anneal_end=3)  # the grid below's epochs
    # A fixed guidance for every row (the demo's own tables pick theirs by a sweep).
    config["sampling"] = {**config["sampling"], "guidance_scale": 2.0, "guidance_power": 1.0}
    config["tables"] = {
        "table2": {
            "rows": [
                {"anneal_start": 0, "anneal_end": 1},
                {"anneal_start": 0, "anneal_end": 2},
                {"anneal_start": 2, "anneal_end": 3},
                {"anneal_start": 4, "anneal_end": 4, "sampling": {"order": "random"}},
            ]
        },
        "table3": {
            "base": {"anneal_start": 0, "anneal_end": 3},
            "rows": [{"target_order": "z-curve", "sampling": {"order": "z-curve"}}],
        },
    }
    return config


def rows_of(study, table: str) -> list:
    return study.tables[table]


def write_metrics(run_dir: Path, rows: list[tuple[float, float, float, float]]) -> None:
    """metrics.csv rows (epoch, loss, r, elapsed_s), as rar.training.loop logs them."""
    lines = [FIELDS]
    for i, (epoch, loss, ratio, elapsed) in enumerate(rows):
        lines.append(f"{(i + 1) * 10},{epoch},{loss},0.1,0.001,{ratio},1.0,100,10,{elapsed}")
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")


def write_record(path: Path, *, job_id: str, state: str, backend: str = "debug", **extra) -> None:
    record = dict(
        backend=backend,
        job_id=job_id,
        name=f"train_{path.parent.name}",
        command="x",
        submitted="2025-01-01T00:00:00+00:00",
        folder=None,
        tasks=1,
        requeues=0,
        state=state,
        updated="2025-01-01T00:00:00+00:00",
    )
    path.write_text(json.dumps({**record, **extra}))


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


@pytest.fixture
def grid(tmp_path):
    """The study and its outputs under tmp_path: done, training, failed, waiting."""
    study = load_study(study_config())
    done, training, branch, trunk = (row.run for row in rows_of(study, "table2"))
    failed = rows_of(study, "table3")[0].run
    for run in study.runs.values():  # the workflow writes every run's config first
        run_dir = tmp_path / study.run_dir(run.id)
        run_dir.mkdir(parents=True)
        run.config.save(run_dir / "config.yaml")

    # done: trained, sampled and scored
    d = tmp_path / study.run_dir(done)
    write_metrics(d, [(2.0, 4.0, 1.0, 100.0), (4.0, 3.0, 0.0, 200.0)])
    write_record(d / "job.json", job_id="pid-1", state="COMPLETED")
    touch(d / "checkpoints/final.pt")
    ev = tmp_path / study.eval_dir(rows_of(study, "table2")[0].evaluation)
    touch(ev / "samples.npz")
    (ev / "metrics.json").write_text(json.dumps({"fid_efficientnet_lite0": 12.0}))

    # training: two jobs (the second resumed, elapsed restarts), 4 GPUs, alive (this process)
    t = tmp_path / study.run_dir(training)
    first_job = [(0.5, 5.0, 1.0, 100.0), (1.0, 4.5, 1.0, 200.0), (1.5, 4.2, 1.0, 300.0)]
    write_metrics(t, [*first_job, (2.0, 4.0, 0.5, 50.0), (2.5, 3.9, 0.25, 150.0)])
    write_record(t / "job.json", job_id=f"pid-{os.getpid()}", state="RUNNING", tasks=4)
    touch(t / "checkpoints/last.pt")

    # the trunk is in its first segment, so the branch waits on its epoch 2 checkpoint
    k = tmp_path / study.run_dir(trunk)
    write_metrics(k, [(0.5, 5.0, 1.0, 60.0), (1.0, 4.6, 1.0, 120.0)])
    write_record(k / "job.json", job_id=f"pid-{os.getpid()}", state="RUNNING")

    # failed: a non-finite loss, with its log
    f = tmp_path / study.run_dir(failed)
    write_metrics(f, [(0.5, 5.0, 1.0, 30.0)])
    write_record(f / "job.json", job_id="pid-2", state="FAILED")
    (f / FAILURE_FILE).write_text("non-finite loss at step 12\nlog: somewhere.log\n")
    log = tmp_path / "logs/demo/train" / f"{failed}.log"
    log.parent.mkdir(parents=True)
    log.write_text("step 10 loss 5.0\nTraceback ...\nFloatingPointError: non-finite loss\n")
    runs = dict(done=done, training=training, branch=branch, trunk=trunk, failed=failed)
    return study, tmp_path, runs


@pytest.fixture
def no_slurm(tmp_path, monkeypatch):
    """A PATH without sacct and squeue."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def fake_slurm(folder: Path, monkeypatch, sacct: str = "", squeue: str = "") -> Path:
    """sacct/squeue scripts printing the given lines and logging their calls; PATH = them."""
    folder.mkdir()
    calls = folder / "calls.txt"
    for tool, out in (("sacct", sacct), ("squeue", squeue)):
        script = folder / tool
        script.write_text(f"#!/bin/sh\necho {tool} \"$@\" >> {calls}\nprintf '{out}'\n")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{folder}:/bin:/usr/bin")
    return calls


REFERENCES = (FLOOR, RECONSTRUCTED, CEILING)


def by_run(status: Status) -> dict:
    """The table rows' lines by run (a CEILING line names the run whose config it samples)."""
    return {row.run: row for row in status.rows if not row.label.endswith(REFERENCES)}


def test_each_state_of_a_partly_finished_grid(grid, no_slurm):
    study, root, runs = grid
    status = collect(study, root=root)
    rows = by_run(status)
    assert [r.label for r in status.rows] == [
        "table2 (0, 1)",
        "table2 (0, 2)",
        "table2 (2, 3)",
        "table2 (4, 4)",
        "table2 real held-out images",
        "table2 tokenizer reconstructions",
        "table2 untrained model",
        "table3 z-curve",
        "table3 real held-out images",
        "table3 tokenizer reconstructions",
        "table3 untrained model",
    ]
    # the reference rows train nothing: the floor waits on its evaluation (real images need
    # no sampling), the ceiling on sampling its initial weights, whatever its run's state
    floor, ceiling = status.rows[4], status.rows[6]
    assert (floor.stage, floor.waits_on) == ("waiting", "an evaluation job")
    assert (ceiling.stage, ceiling.waits_on) == ("waiting", "a sampling job")
    assert ceiling.run == runs["done"]  # the table's first row's config, its initial weights
    assert rows[runs["done"]].stage == "done"
    assert rows[runs["done"]].epoch == 4.0

    training = rows[runs["training"]]
    assert training.stage == "training"
    assert (training.epoch, training.epochs) == (2.5, 4.0)
    assert (training.ratio, training.loss) == (0.25, 3.9)
    assert (training.job_id, training.job_state) == (f"pid-{os.getpid()}", "RUNNING")

    waiting = rows[runs["branch"]]
    assert waiting.stage == "waiting"
    assert waiting.waits_on == f"trunk {runs['trunk']} epoch 2"
    assert rows[runs["trunk"]].stage == "training"

    failed = rows[runs["failed"]]
    assert failed.stage == "failed"
    assert failed.reason == "non-finite loss at step 12"
    assert failed.log == str(root / "logs/demo/train" / f"{runs['failed']}.log")
    assert failed.log_tail[-1] == "FloatingPointError: non-finite loss"

    assert (status.runs_done, status.runs_total) == (1, 5)
    # the two tables share one floor and its reconstructions; their ceilings sample in their
    # first rows' orders
    assert (status.evaluations_done, status.evaluations_total) == (1, 9)
    text = format_status(status)
    assert "failed: 1" in text and "non-finite loss at step 12" in text
    assert "rows: table2 (anneal_start, anneal_end); table3 (target_order)" in text


def test_a_trunk_between_segments_waits_on_its_next_one(grid, no_slurm):
    """Its segment's job ended well and left its checkpoint; the next job has not started: the
    trunk waits (in Snakemake's queue), it is not training under a COMPLETED job. The segment
    is the checkpoint's, not the last logged step's (logging need not land on its end)."""
    study, root, runs = grid
    k = root / study.run_dir(runs["trunk"])
    write_metrics(k, [(1.0, 4.6, 1.0, 120.0), (1.9, 4.2, 1.0, 230.0)])
    write_record(k / "job.json", job_id="pid-7", state="COMPLETED")
    assert by_run(collect(study, root=root))[runs["trunk"]].stage == "training"  # no checkpoint
    touch(k / "checkpoints/epoch_2.pt")
    trunk = by_run(collect(study, root=root))[runs["trunk"]]
    assert (trunk.stage, trunk.job_state) == ("waiting", "COMPLETED")
    assert trunk.waits_on == "its next segment, from epoch 2"
    # while that job runs, the trunk is training
    write_record(k / "job.json", job_id=f"pid-{os.getpid()}", state="RUNNING")
    assert by_run(collect(study, root=root))[runs["trunk"]].stage == "training"


def test_gpu_hours_and_eta_arithmetic(grid, no_slurm):
    study, root, runs = grid
    status = collect(study, root=root)
    training = by_run(status)[runs["training"]]
    # two jobs: 300 s + 150 s (elapsed restarts on resume), 4 GPUs from the job record
    assert training.gpu_hours == pytest.approx(450 / 3600 * 4)
    # recent throughput: the last job's 0.5 epochs in 100 s; 1.5 epochs left
    assert training.eta_s == pytest.approx(1.5 / (0.5 / 100))
    # totals: every run once (1 GPU where the record says nothing of more)
    used = (200 + 450 * 4 + 120 + 30) / 3600
    assert status.gpu_hours_used == pytest.approx(used)
    assert status.gpu_hours_planned == pytest.approx(estimate(study)["gpu_hours"])
    assert format_duration(training.eta_s) == "5m"
    assert format_duration(2 * 86400 + 3 * 3600) == "2d3h"


def test_hours_are_labelled_by_what_the_jobs_used(grid, no_slurm):
    """A job recorded with no GPU (the CPU demo, `gpus: 0`) has CPU-hours, not GPU-hours; the
    column is named after what the jobs used, with the unit in each cell when both ran."""
    study, root, runs = grid
    for run in runs.values():  # every job on the CPU (the training one: 4 processes)
        record = root / study.run_dir(run) / "job.json"
        if record.exists():
            data = json.loads(record.read_text())
            record.write_text(json.dumps({**data, "gpus": 0}))
    status = collect(study, root=root)
    training = by_run(status)[runs["training"]]
    assert (training.gpu_hours, training.cpu_hours) == (0.0, pytest.approx(450 / 3600 * 4))
    assert status.gpu_hours_used == 0.0
    assert status.cpu_hours_used == pytest.approx((200 + 450 * 4 + 120 + 30) / 3600)
    text = format_status(status)
    header = next(line for line in text.splitlines() if line.startswith("row "))
    assert "CPU-h" in header and "GPU-h" not in header
    assert "GPU-hours: 0 used" in text and "CPU-hours: 0.597 used by jobs without a GPU" in text

    record = root / study.run_dir(runs["done"]) / "job.json"  # one GPU job among CPU jobs
    record.write_text(json.dumps({**json.loads(record.read_text()), "gpus": 2}))
    status = collect(study, root=root)
    assert by_run(status)[runs["done"]].gpu_hours == pytest.approx(200 / 3600 * 2)
    text = format_status(status)
    header = next(line for line in text.splitlines() if line.startswith("row "))
    assert " hours " in header and "0.111 GPU" in text and "0.5 CPU" in text


def test_status_exits_0_when_nothing_failed(grid, no_slurm, capsys):
    from rar.cli import main

    _, root, runs = grid
    config = root / "study.yaml"
    config.write_text(yaml.safe_dump(study_config()))
    argv = ["status", "--config", str(config), "--root", str(root)]
    assert main(argv) == 1
    assert "failed: 1" in capsys.readouterr().out
    study = load_study(study_config())
    failed_dir = root / study.run_dir(runs["failed"])
    (failed_dir / FAILURE_FILE).unlink()
    write_record(failed_dir / "job.json", job_id=f"pid-{os.getpid()}", state="RUNNING")
    assert main(argv) == 0


def test_json_round_trip(grid, no_slurm, capsys):
    from rar.cli import main

    _, root, runs = grid
    config = root / "study.yaml"
    config.write_text(yaml.safe_dump(study_config()))
    # exit 1: a row has failed
    assert main(["status", "--config", str(config), "--root", str(root), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    again = Status.from_dict(data)
    assert again.to_dict() == data
    assert by_run(again)[runs["failed"]].stage == "failed"
    assert again.slurm is False


def test_without_scheduler_tools_a_record_is_shown_unverified(grid, no_slurm):
    study, root, runs = grid
    record = root / study.run_dir(runs["training"]) / "job.json"
    write_record(record, job_id="4242", state="RUNNING", backend="slurm", tasks=4)
    status = collect(study, root=root)
    row = by_run(status)[runs["training"]]
    assert (row.stage, row.job_id, row.job_state, row.job_verified) == (
        "training",
        "4242",
        "RUNNING",
        False,
    )
    assert "4242 RUNNING?" in format_status(status)


def test_a_vanished_local_job_is_lost_not_running(grid, no_slurm):
    study, root, runs = grid
    record = root / study.run_dir(runs["training"]) / "job.json"
    write_record(record, job_id=f"pid-{DEAD_PID}", state="RUNNING")
    row = by_run(collect(study, root=root))[runs["training"]]
    assert row.job_state == LOST
    assert row.stage == "failed" and row.reason.startswith("job gone")


def test_the_scheduler_is_asked_once_and_a_vanished_job_is_lost(grid, tmp_path, monkeypatch):
    study, root, runs = grid
    # 111 ran, was requeued and runs again; 99999999 is unknown to sacct and squeue.
    calls = fake_slurm(tmp_path / "bin", monkeypatch, sacct=r"111|REQUEUED\n111|RUNNING\n")
    write_record(
        root / study.run_dir(runs["training"]) / "job.json",
        job_id="111",
        state="PENDING",
        backend="slurm",
        tasks=2,
    )
    vanished = root / study.run_dir(runs["trunk"]) / "job.json"
    write_record(vanished, job_id="99999999", state="RUNNING", backend="slurm")
    old = time.time() - 3600  # recorded long ago: past the grace of a freshly submitted job
    os.utime(vanished, (old, old))

    status = collect(study, root=root)
    rows = by_run(status)
    assert (rows[runs["training"]].job_state, rows[runs["training"]].requeues) == ("RUNNING", 1)
    assert rows[runs["trunk"]].job_state == LOST
    assert rows[runs["trunk"]].stage == "failed"
    assert status.slurm is True
    tools = [line.split()[0] for line in calls.read_text().splitlines()]
    assert tools == ["sacct", "squeue"]  # one query each, for all job ids
    assert "111,99999999" in calls.read_text().splitlines()[0]


def sbatch_sleep(name: str) -> str:
    """A requeueable job on the local cluster that sleeps 5 minutes; its id."""
    cmd = [
        "sbatch",
        "--parsable",
        "-p",
        "debug",
        "-c",
        "1",
        "--mem=100M",
        "-t",
        "5",
        "--requeue",
        "-J",
        name,
        "-o",
        "/dev/null",
        "--wrap",
        "sleep 300",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout
    return out.strip().split(";")[0]


def squeue_state(job_id: str) -> str:
    cmd = ["squeue", "-h", "-j", job_id, "-o", "%T"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()


@pytest.mark.slurm
def test_the_real_slurm_query_reads_a_requeue_a_cancel_and_a_vanished_job(grid):
    """rar status against the local cluster (.ci/run starts it), no fakes: a job that ran and was
    requeued (`scontrol requeue`) is live with one requeue (sacct --duplicates), a cancelled
    one is CANCELLED, and a recorded id that SLURM never had is LOST."""
    study, root, runs = grid
    tag = f"rar_status_{os.getpid()}"
    requeued, cancelled = sbatch_sleep(f"{tag}_requeued"), sbatch_sleep(f"{tag}_cancelled")
    try:
        deadline = time.monotonic() + 180  # the one node may be busy with other tests' jobs
        while squeue_state(requeued) != "RUNNING":
            assert time.monotonic() < deadline, f"job {requeued}: {squeue_state(requeued)}"
            time.sleep(1)
        subprocess.run(["scontrol", "requeue", requeued], check=True, timeout=30)
        subprocess.run(["scancel", cancelled], check=True, timeout=30)
        deadline = time.monotonic() + 60  # until the accounting database has both
        while (answer := query_slurm([requeued, cancelled])).get(cancelled, ("?",))[0] != (
            "CANCELLED"
        ) or answer.get(requeued, ("?", 0))[1] != 1:
            assert time.monotonic() < deadline, answer
            time.sleep(1)
        assert answer[requeued][0] in ("PENDING", "RUNNING")  # held after the requeue, or let go

        for run, job_id in ((runs["training"], requeued), (runs["trunk"], cancelled)):
            write_record(
                root / study.run_dir(run) / "job.json",
                job_id=job_id,
                state="RUNNING",
                backend="slurm",
            )
        vanished = root / study.run_dir(runs["failed"]) / "job.json"
        write_record(vanished, job_id="99999999", state="RUNNING", backend="slurm")
        old = time.time() - 3600  # past the grace of a freshly submitted job
        os.utime(vanished, (old, old))
        status = collect(study, root=root)
    finally:
        subprocess.run(["scancel", requeued, cancelled], check=False, timeout=30)
    rows = by_run(status)
    assert status.slurm is True
    assert rows[runs["training"]].job_state in ("PENDING", "RUNNING")
    assert rows[runs["training"]].requeues == 1
    assert (rows[runs["trunk"]].job_state, rows[runs["trunk"]].requeues) == ("CANCELLED", 0)
    assert rows[runs["failed"]].job_state == LOST


def test_a_failure_older_than_the_next_attempt_is_not_shown(grid, no_slurm):
    study, root, runs = grid
    run_dir = root / study.run_dir(runs["failed"])
    old = time.time() - 600
    os.utime(run_dir / FAILURE_FILE, (old, old))
    write_record(run_dir / "job.json", job_id=f"pid-{os.getpid()}", state="RUNNING")
    assert by_run(collect(study, root=root))[runs["failed"]].stage == "training"


def test_status_is_torch_free_and_fast(grid):
    """`rar status` stays fast by what it leaves unimported (torch alone takes seconds); a
    wall-clock limit would fail on a loaded machine and pass a slow change on a fast one."""
    _, root, _ = grid
    config = root / "study.yaml"
    config.write_text(yaml.safe_dump(study_config()))
    heavy = ("torch", "torchvision", "scipy", "matplotlib", "pandas", "snakemake")
    code = (
        "import sys; from rar.cli import main; "
        f"main(['status', '--config', {str(config)!r}, '--root', {str(root)!r}]); "
        f"main(['status', '--config', {str(REPO / 'config/config.yaml')!r}, "
        f"'--root', {str(root)!r}]); "
        f"print('imported', [m for m in {heavy!r} if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    assert "table3 z-curve" in out
    assert out.splitlines()[-1] == "imported []"


def test_debug_launch_writes_failure_and_a_later_success_clears_it(tmp_path):
    record = tmp_path / "run" / "job.json"
    record.parent.mkdir()
    launcher = LauncherConfig(backend="debug")

    def boom(step: int) -> None:
        raise FloatingPointError(f"non-finite loss (nan) at step {step} (epoch 0.5)")

    with pytest.raises(FloatingPointError):
        launch(boom, 42, launcher=launcher, record=record, name="train_run")
    failure = record.parent / FAILURE_FILE
    assert failure.read_text().splitlines()[0] == "non-finite loss at step 42"
    assert json.loads(record.read_text())["state"] == "FAILED"

    assert launch(lambda: "ok", launcher=launcher, record=record, name="train_run") == "ok"
    assert not failure.exists()


def test_a_debug_job_records_whether_it_uses_a_gpu(tmp_path):
    """The job record says how many GPUs the job uses: 0 on the CPU (`rar status`: CPU-h)."""
    record = tmp_path / "run" / "job.json"
    record.parent.mkdir()
    launcher = LauncherConfig(backend="debug")
    assert (
        launch(
            lambda device: device, device="cpu", launcher=launcher, record=record, name="train_run"
        )
        == "cpu"
    )
    assert json.loads(record.read_text())["gpus"] == 0


def test_launch_error_writes_failure(tmp_path, monkeypatch):
    """A submission that cannot happen (no sbatch here) is a LaunchError, and a failure."""
    monkeypatch.setenv("PATH", str(tmp_path))
    record = tmp_path / "eval" / "samples_job.json"
    record.parent.mkdir()
    with pytest.raises(LaunchError):
        launch(print, launcher=LauncherConfig(backend="slurm"), record=record, name="sample_x")
    assert "slurm backend needs" in (record.parent / FAILURE_FILE).read_text()


def test_a_training_job_writes_its_own_failure(tmp_path):
    """rar.training.loop.run writes failure.txt from inside the job (its launcher may be gone)."""
    from rar.settings.training import TrainConfig
    from rar.training.loop import run

    config = tmp_path / "config.yaml"
    TrainConfig(model="rar_tiny", data="").save(config)
    with pytest.raises(ValueError, match="key 'data'"):
        run(config, tmp_path)
    reason = (tmp_path / FAILURE_FILE).read_text().splitlines()[0]
    assert reason.startswith("ValueError:") and "key 'data'" in reason


def test_watch_redraws_until_ctrl_c(monkeypatch, capsys):
    from rar.ops import status

    frames = iter(["one", "two"])

    def sleep(_seconds):
        if next(frames, None) is None:
            raise KeyboardInterrupt

    monkeypatch.setattr(status.time, "sleep", sleep)
    assert status.watch(lambda: "frame", 5) == 0
    out = capsys.readouterr().out
    assert out.count("\033[2J\033[H" + "frame") == 3
