"""Finished work is never redone (docs/results.md): on a finished grid, a code change, lost
Snakemake records, a copied results folder and a config edit plan no heavy job whose output is
there; an edit adds only its own work, and `rar plan` charges what the workflow trains."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from test_workflow import fake_imagenet, job_counts, mini_demo, snakemake  # noqa: F401

from rar.cli import main
from rar.experiments import load_study
from rar.experiments.schedule import training_jobs

REPO = Path(__file__).resolve().parents[1]
# The stages whose outputs cost GPU-hours (and the data they read): none of them may rerun.
HEAVY = {
    "demo_images",
    "demo_tokenizer",
    "tokenize_part",
    "shards",
    "tokenize_val",
    "run_config",
    "untrained_checkpoint",
    "train",
    "sweep_guidance",
    "sample",
    "reconstruct",
    "evaluate",
    "bench_sample",
}


def grid_config() -> dict:
    """The test-scale demo (test_workflow.mini_demo) with its annealing table only: rows (0, 0)
    from scratch, (1, 2) a branch at epoch 1, (2, 2) the trunk, which keeps epoch_1.pt."""
    config = mini_demo("grid")
    del config["tables"]["table3"]
    return config


def planned_jobs(root: Path, config: Path, **kwargs) -> dict[str, int]:
    args = ["-d", str(root), "--configfile", str(config), "-n", "--quiet", "rules"]
    return job_counts(snakemake(*args, "--config", "launcher=local", **kwargs).stdout)


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_grid(tmp_path_factory) -> Path:
    """A finished grid: the workflow run to the end in its own folder (grid.yaml beside)."""
    root = tmp_path_factory.mktemp("finished")
    (root / "grid.yaml").write_text(yaml.safe_dump(grid_config(), sort_keys=False))
    args = ["-d", str(root), "--configfile", str(root / "grid.yaml"), "--cores", "2"]
    snakemake(*args, "--config", "launcher=local")
    return root


def copy_grid(grid: Path, dest: Path) -> Path:
    shutil.copytree(grid, dest, symlinks=True)  # timestamps kept
    return dest


@pytest.mark.slow
def test_code_changes_lost_records_and_moved_results_redo_nothing(finished_grid, tmp_path):
    config = finished_grid / "grid.yaml"
    assert planned_jobs(finished_grid, config) == {}
    # a git pull that touches every file of the package and the workflow
    clone = tmp_path / "clone"
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in tracked:
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, clone / name)
    later = time.time() + 3600
    for path in [*clone.joinpath("rar").rglob("*"), *clone.joinpath("workflow").rglob("*")]:
        os.utime(path, (later, later))
    jobs = planned_jobs(finished_grid, config, snakefile=clone / "Snakefile", pythonpath=clone)
    assert HEAVY.isdisjoint(jobs), jobs
    # Snakemake's records lost
    bare = copy_grid(finished_grid, tmp_path / "bare")
    shutil.rmtree(bare / ".snakemake")
    assert HEAVY.isdisjoint(planned_jobs(bare, config)), "after rm -r .snakemake"
    # the results copied into a fresh folder with every timestamp scrambled (cp -r)
    moved = tmp_path / "moved"
    shutil.copytree(finished_grid / "results", moved / "results", copy_function=shutil.copyfile)
    rng = random.Random(0)
    for path in (moved / "results").rglob("*"):
        stamp = time.time() - rng.uniform(0, 86_400)
        os.utime(path, (stamp, stamp))
    jobs = planned_jobs(moved, config)
    assert HEAVY.isdisjoint(jobs), jobs


def dag_epochs(stdout: str, study) -> dict[str, float]:
    """Run id -> the epochs its training jobs train, read from a dry run's shell commands:
    each job from its --init-from checkpoint's epoch (0 without one) to its --until-epoch
    (the run's end without one)."""
    epochs: dict[str, float] = {}
    for line in stdout.splitlines():
        if "rar train --config" not in line:
            continue
        words = shlex.split(line)
        rid = Path(words[words.index("--config") + 1]).parent.name
        stop = study.runs[rid].config.epochs
        if "--until-epoch" in words:
            stop = float(words[words.index("--until-epoch") + 1])
        start = 0.0
        if "--init-from" in words:
            start = float(Path(words[words.index("--init-from") + 1]).stem.removeprefix("epoch_"))
        epochs[rid] = epochs.get(rid, 0.0) + stop - start
    return epochs


def with_rows(config: dict, rows: list[dict]) -> dict:
    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["tables"]["table2"]["rows"] += rows
    return edited


@pytest.mark.slow
def test_a_row_at_a_new_anneal_start_trains_only_its_own_run(finished_grid, tmp_path, capsys):
    root = copy_grid(finished_grid, tmp_path / "grid")
    before = file_hashes(root / "results/grid")
    # 1.5: the trunk passed it keeping epoch_1.pt, where the new run branches; 0.5: nothing
    # kept before it, so that run trains from scratch
    edited = with_rows(grid_config(), [{"anneal_start": 1.5, "anneal_end": 2}])
    edited["tables"]["table2"]["rows"].append({"anneal_start": 0.5, "anneal_end": 2})
    path = root / "edited.yaml"
    path.write_text(yaml.safe_dump(edited, sort_keys=False))
    study = load_study(edited, root=root)
    late = study.runs[study.tables["table2"][3].run]
    assert (late.kind, late.branch_epoch) == ("branch", 1.0) and "passed epoch 1.5" in late.note
    early = study.runs[study.tables["table2"][4].run]
    assert early.kind == "scratch" and "passed epoch 0.5" in early.note

    assert main(["plan", "--config", str(path), "--root", str(root)]) == 0
    plan = capsys.readouterr().out
    assert f"config {path}" in plan
    assert "it starts from the trunk's epoch 1" in plan
    assert "to train now: 3 epochs" in plan  # 1.5's one epoch and 0.5's two
    proc = snakemake(
        "-d", str(root), "--configfile", str(path), "-n", "-p", "--config", "launcher=local"
    )
    jobs = job_counts(proc.stdout)
    assert jobs["train"] == jobs["run_config"] == jobs["sweep_guidance"] == 2, jobs
    assert {"tokenize_part", "shards", "untrained_checkpoint", "reconstruct"}.isdisjoint(jobs)
    assert dag_epochs(proc.stdout, study) == {late.id: 1.0, early.id: 2.0}

    snakemake(
        "-d", str(root), "--configfile", str(path), "--cores", "2", "--config", "launcher=local"
    )
    after = file_hashes(root / "results/grid")
    report = ("table2.", "plots/", "recipes/")  # what the new rows change, by design
    changed = [k for k in before if after[k] != before[k] and not k.startswith(report)]
    assert changed == [], changed
    assert planned_jobs(root, path) == {}


@pytest.mark.slow
def test_your_own_config_replaces_the_papers(fake_imagenet):  # noqa: F811
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["tables"] = {"table2": config["tables"]["table2"]}
    config["official"] = {}
    path = fake_imagenet / "mine.yaml"
    path.write_text(yaml.safe_dump(config))
    # run where the paper's config is, as from a checkout
    (fake_imagenet / "config").mkdir()
    shutil.copy(REPO / "config/config.yaml", fake_imagenet / "config/config.yaml")
    proc = snakemake("-d", str(fake_imagenet), "--configfile", str(path), "-n", "-p")
    study = load_study(config)
    assert f"study 'paper' from {path}" in proc.stdout + proc.stderr
    assert dag_epochs(proc.stdout, study) == {r.id: r.epochs_to_train for r in study.runs.values()}
    jobs = job_counts(proc.stdout)
    assert jobs["shards"] == 1 and jobs["table"] == 1  # no ten-crop set, no Table 4
    assert jobs["sample"] == len(study.evaluations)  # and no released checkpoints


def plan_configs() -> dict[str, dict]:
    """The paper's config, and generated ones: tables of one, two and three rows, a row at an
    anneal start no other row has, and a scan-order table of RAR-B (whose trunk no row
    needs)."""
    paper = yaml.safe_load((REPO / "config/config.yaml").read_text())
    table2 = paper["tables"]["table2"]

    def only(rows: list[dict], **base) -> dict:
        config = yaml.safe_load(yaml.safe_dump(paper))
        config["official"] = {}
        config["tables"] = {"table2": {**table2, "base": {**table2["base"], **base}}}
        config["tables"]["table2"]["rows"] = rows
        return config

    scan = [{"target_order": o} for o in ("row-major", "spiral-in", "z-curve")]
    return {
        "paper": paper,
        "one row": only([{"anneal_start": 100, "anneal_end": 300}]),
        "two rows": only([{"anneal_start": 200, "anneal_end": 300}, {"anneal_start": 0}]),
        "three rows": only(table2["rows"][:3]),
        "new anneal start": only([*table2["rows"][:4], {"anneal_start": 50, "anneal_end": 300}]),
        "scan orders, RAR-B": only(scan, model="rar_b", anneal_start=200, anneal_end=300),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", list(plan_configs()))
def test_plan_charges_the_epochs_the_workflow_trains(name, fake_imagenet):  # noqa: F811
    config = plan_configs()[name]
    path = fake_imagenet / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake("-d", str(fake_imagenet), "--configfile", str(path), "-n", "-p")
    study = load_study(config)
    assert dag_epochs(proc.stdout, study) == {r.id: r.epochs_to_train for r in study.runs.values()}


@pytest.mark.slow
@pytest.mark.parametrize("table", ["table2", "table3", "table4"])
def test_plan_by_table_charges_what_the_tables_target_trains(table, fake_imagenet, capsys):  # noqa: F811
    """`rar plan --table T` and `snakemake results/T.csv`: the same runs and epochs (a trunk
    only up to the branch points T's rows start from)."""
    paper = REPO / "config/config.yaml"
    proc = snakemake(
        "-d", str(fake_imagenet), "--configfile", str(paper), "-n", "-p", f"results/{table}.csv"
    )
    study = load_study(yaml.safe_load(paper.read_text()))
    planned: dict[str, float] = {}
    for job in training_jobs(study, [table]):
        planned[job.run] = planned.get(job.run, 0.0) + job.epochs
    assert dag_epochs(proc.stdout, study) == planned
    assert main(["plan", "--config", str(paper), "--table", table]) == 0
    out = capsys.readouterr().out.splitlines()
    at = next(i for i, x in enumerate(out) if x.startswith(f"  {table}: ") and " rows, " in x)
    assert f"{len(planned)} runs, {sum(planned.values()):g} epochs" in out[at]
    # and its heavy jobs, as the dry run counts them
    stats = _job_stats(proc.stdout)
    assert out[at + 1] == (
        f"    jobs: {stats['train']} training jobs, "
        f"{stats.get('sweep_guidance', 0)} guidance sweeps, "
        f"{stats['evaluate']} evaluations (rows, reference rows, curve epochs)"
    )


def _job_stats(dry_run: str) -> dict[str, int]:
    """A dry run's "Job stats" table: rule -> jobs."""
    table = dry_run[dry_run.index("Job stats:") :].splitlines()[3:]
    rows = (line.split() for line in itertools.takewhile(str.strip, table))
    return {row[0]: int(row[1]) for row in rows}


def test_the_demo_plan_charges_the_epochs_the_workflow_trains(tmp_path):
    config = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    proc = snakemake(
        "-d", str(tmp_path), "--configfile", str(REPO / "config/demo.yaml"), "-n", "-p"
    )
    study = load_study(config)
    assert dag_epochs(proc.stdout, study) == {r.id: r.epochs_to_train for r in study.runs.values()}


def test_every_missing_resource_is_named_in_one_message(fake_imagenet, capsys):  # noqa: F811
    resources = fake_imagenet / "resources"
    for name in (
        "maskgit-vqgan-imagenet-f16-256.bin",
        "pt_inception-2015-12-05-6726825d.pth",
        "VIRTUAL_imagenet256_labeled.npz",
    ):
        (resources / name).unlink()
    keys = ("tokenizer.weights", "evaluation.weights", "evaluation.reference")
    assert (
        main(["plan", "--config", str(REPO / "config/config.yaml"), "--root", str(fake_imagenet)])
        == 0
    )
    plan = capsys.readouterr().out
    # and ImageNet's validation split, which the fixture does not make
    assert "missing before the grid can run (4):" in plan
    assert all(f"  {key}: resources/" in plan for key in keys)
    assert "rar fetch --only adm_reference" in plan
    # the workflow refuses to start, naming all of them at once, before any job
    paper = ["--configfile", str(REPO / "config/config.yaml")]
    proc = snakemake(
        "-d", str(fake_imagenet), *paper, "--cores", "1", "results/table2.csv", check=False
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    message = output[output.index("resource(s) missing") :]
    assert all(key in message for key in keys) and "resources/imagenet/val" in message
    assert not (fake_imagenet / "results/runs").exists() and not (fake_imagenet / "logs").exists()


def test_a_number_in_exponent_form_is_a_number():
    config = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    config["train"]["lr"] = "4e-4"  # what YAML 1.1 makes of `lr: 4e-4`
    assert {r.config.lr for r in load_study(config).runs.values()} == {4e-4}
