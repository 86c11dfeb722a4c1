"""The Snakemake workflow: lint, the paper's DAG as a dry run, and the demo DAG for real."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rar.experiments import load_study

REPO = Path(__file__).resolve().parents[1]


def snakemake(*args, cwd=REPO, timeout=900, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def job_counts(stdout: str) -> dict[str, int]:
    """The 'job stats' table of a dry run: rule -> count."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stdout, re.MULTILINE)}


def test_lint_is_clean():
    proc = snakemake("--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def fake_imagenet(tmp_path) -> Path:
    """What a user brings, as empty stand-ins: the image tree and the weight files."""
    for wnid in ("n01440764", "n01443537"):
        (tmp_path / "resources/imagenet/train" / wnid).mkdir(parents=True)
        (tmp_path / "resources/imagenet/train" / wnid / f"{wnid}_1.JPEG").write_bytes(b"")
    for name in (
        "maskgit-vqgan-imagenet-f16-256.bin",
        "pt_inception-2015-12-05-6726825d.pth",
        "VIRTUAL_imagenet256_labeled.npz",
        *(f"rar_{size}.bin" for size in ("b", "l", "xl", "xxl")),
    ):
        (tmp_path / "resources" / name).write_bytes(b"")
    return tmp_path


def test_paper_dry_run_plans_20_runs_with_one_trunk(fake_imagenet):
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["tables"] = {k: config["tables"][k] for k in ("table2", "table3")}
    path = fake_imagenet / "paper.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake(
        "-n", "--quiet", "rules", "-d", str(fake_imagenet),
        "--configfile", str(path), "--replace-workflow-config",
    )  # fmt: skip
    jobs = job_counts(proc.stdout)
    assert jobs["train"] == 20  # 15 + 6 rows, table2 (200, 300) = table3 row-major
    assert jobs["sample"] == 24  # and the four released checkpoints (results/official.csv)
    assert jobs["train_segment"] == 3  # the trunk stops at 100, 200 and 300 for branches
    assert jobs["evaluate"] == 24
    assert jobs["tokenize_part"] == 16 and jobs["shards"] == 1
    assert jobs["table"] == 3


# -- the demo DAG at test scale --------------------------------------------------------------


def mini_demo(study: str) -> dict:
    """config/demo.yaml shrunk: 4 classes of 40 images, 2 epochs, 3 + 2 table rows."""
    config = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    config["study"] = study
    config["data"]["demo"].update(num_classes=4, images_per_class=40, val_per_class=8)
    config["data"].update(num_classes=4, source_images=160, images_per_part=80)
    config["tokenizer"]["train"].update(steps=20, batch_size=16)
    config["train"].update(epochs=2, global_batch=16, warmup_epochs=0.5, anneal_start=1)
    config["train"].update(anneal_end=2, log_every=2)
    config["sampling"].update(num_per_class=4, chunk_size=8)
    config["tables"] = {
        "table2": {
            "rows": [
                {"anneal_start": 0, "anneal_end": 0},
                {"anneal_start": 1, "anneal_end": 2},
                {"anneal_start": 2, "anneal_end": 2, "sampling": {"order": "random"}},
            ],
            "evaluate_epochs": [1],
        },
        "table3": {
            "base": {"anneal_start": 1, "anneal_end": 2},
            "rows": [
                {"target_order": "row-major"},
                {"target_order": "z-curve", "sampling": {"order": "z-curve"}},
            ],
        },
    }
    return config


def test_demo_dag_end_to_end(tmp_path):
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(mini_demo("mini"), sort_keys=False))
    args = ["-d", str(tmp_path), "--configfile", str(path), "--replace-workflow-config"]
    snakemake(*args, "--cores", "2", "--config", "launcher=local", timeout=1500)
    out = tmp_path / "results/mini"
    with open(out / "table2.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["anneal_start"], r["anneal_end"]) for r in rows] == [
        ("0", "0"),
        ("1", "2"),
        ("2", "2"),
    ]
    assert all(r["status"].startswith("ok") and float(r["fid"]) > 0 for r in rows)
    assert all(r["extractor"] == "efficientnet-lite0" for r in rows)
    assert "NOT INCEPTION" in (out / "table2.md").read_text()
    for plot in ("scan_orders", "table2_fid", "table2_loss", "table2_samples", "table3_fid"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 1000
    assert (out / "plots/table2_fid_vs_epoch.png").exists()
    # the trunk (2, 2) left its branch point; the branch (1, 2) started from it
    trunk = rows[2]["run"]
    assert (out / "runs" / trunk / "checkpoints/epoch_1.pt").exists()
    with open(out / "runs" / rows[1]["run"] / "metrics.csv") as f:
        first_logged_epoch = float(next(csv.DictReader(f))["epoch"])
    assert 1 < first_logged_epoch <= 1.5  # it trained from epoch 1 on, not from 0
    metrics = json.loads((out / "evals" / rows[0]["evaluation"] / "metrics.json").read_text())
    assert metrics["num_samples"] == 16 and metrics["comparable_to_paper"] is False
    # a table made in the middle of a grid marks what is missing (rar report)
    (out / "evals" / rows[1]["evaluation"] / "metrics.json").unlink()
    from rar.cli import main

    assert (
        main(["report", "--config", str(path), "--root", str(tmp_path), "--table", "table2"]) == 0
    )
    with open(out / "table2.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)][1] == "missing"
    snakemake(*args, "--cores", "2", "--config", "launcher=local")  # re-scores that row only
    # the HTML report with the tables and plots
    snakemake(*args, "--cores", "2", "--report", str(tmp_path / "report.html"))
    assert (tmp_path / "report.html").stat().st_size > 100_000
    # a rerun has nothing to do
    again = snakemake(*args, "--cores", "2", "-n", "--config", "launcher=local")
    assert "Nothing to be done" in again.stdout + again.stderr
    # re-scoring needs no retraining, and the launcher in use is no reason to rerun
    redo = snakemake(*args, "--cores", "2", "-n", "--quiet", "rules", "--forcerun", "sample")
    jobs = job_counts(redo.stdout)
    assert "train" not in jobs and "train_segment" not in jobs
    assert jobs["sample"] == jobs["evaluate"] == len(load_study(mini_demo("mini")).evaluations)


def _slurm_running() -> bool:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    return subprocess.run(["sinfo"], capture_output=True).returncode == 0


@pytest.mark.slurm
@pytest.mark.skipif(not _slurm_running(), reason="no SLURM cluster (shared/slurm) running")
def test_demo_dag_through_the_slurm_launcher(tmp_path):
    """Every heavy stage of a small demo DAG as a real SLURM job, Snakemake waiting on them."""
    config = mini_demo("slurm")
    config["tables"] = {"table2": {"rows": [{"anneal_start": 0, "anneal_end": 0},
                                           {"anneal_start": 1, "anneal_end": 2},
                                           {"anneal_start": 2, "anneal_end": 2}]}}  # fmt: skip
    del config["throughput_table"]
    path = tmp_path / "slurm.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    launchers = tmp_path / "launch"
    launchers.mkdir()
    for stage in ("tokenize", "train", "sample", "evaluate"):
        settings = dict(
            backend="slurm", partition="debug", cpus_per_task=1, mem_gb=2, time_min=20,
            signal_delay_s=30, poll_s=1, folder=str(tmp_path / "submitit"),
        )  # fmt: skip
        (launchers / f"{stage}.yaml").write_text(yaml.safe_dump(settings))
    args = ["-d", str(tmp_path), "--configfile", str(path), "--replace-workflow-config"]
    snakemake(
        *args, "--cores", "2", "--config", "launcher=slurm", f"launcher_dir={launchers}",
        timeout=1500,
    )  # fmt: skip
    with open(tmp_path / "results/slurm/table2.csv") as f:
        assert all(r["status"].startswith("ok") for r in csv.DictReader(f))
    records = list((tmp_path / "results/slurm/runs").glob("*/job.json"))
    assert records and all(json.loads(r.read_text())["backend"] == "slurm" for r in records)
