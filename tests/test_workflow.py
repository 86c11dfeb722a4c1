"""The Snakemake workflow: lint, the paper's DAG as a dry run, and the demo DAG for real."""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import page_geometry

from rar.experiments import CEILING, FLOOR, RECONSTRUCTED, load_study

REPO = Path(__file__).resolve().parents[1]


def snakemake(
    *args, cwd=REPO, timeout=900, check=True, snakefile=REPO / "Snakefile", pythonpath=None
) -> subprocess.CompletedProcess:
    """Snakemake of `snakefile` (the checkout's; a copy's, with `pythonpath` the copy so that
    its own `rar` is imported), one thread per job; its failure raises with the output."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env["OMP_NUM_THREADS"] = "1"
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(snakefile), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def job_counts(stdout: str) -> dict[str, int]:
    """The 'job stats' table of a dry run: rule -> count."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stdout, re.MULTILINE)}


def dry_run_rules(folder: Path, configfile: Path, *more: str) -> subprocess.CompletedProcess:
    """A dry run in `folder` with `configfile` that lists its jobs per rule (`job_counts`)."""
    return snakemake(
        "-n", "--quiet", "rules", "-d", str(folder), "--configfile", str(configfile), *more
    )


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
        "VIRTUAL_imagenet512.npz",  # the imagenet512 table's reference batch
        "vq_ds16_c2i.pt",  # the llamagen_vq table's tokenizer
        *(f"rar_{size}.bin" for size in ("b", "l", "xl", "xxl")),
    ):
        (tmp_path / "resources" / name).write_bytes(b"")
    return tmp_path


def test_paper_dry_run_plans_20_runs_with_one_trunk(fake_imagenet):
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["tables"] = {k: config["tables"][k] for k in ("table2", "table3")}
    path = fake_imagenet / "paper.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = dry_run_rules(fake_imagenet, path, "--replace-workflow-config")
    jobs = job_counts(proc.stdout)
    # 15 + 6 rows, table2 (200, 300) = table3 row-major: 20 runs, and the trunk's three
    # segments ending at 100, 200 and 300 for the branches
    assert jobs["train"] == 20 + 3
    assert jobs["sweep_guidance"] == 20  # the ablations' guidance scale, chosen per run
    assert jobs["sample"] == 24  # and the four released checkpoints (results/official.csv)
    assert jobs["evaluate"] == 24
    assert jobs["tokenize_part"] == 16 and jobs["shards"] == 1  # center + flip only
    assert jobs["table"] == 3


def test_paper_dry_run_tokenizes_two_data_sets_and_trains_table4_on_its_own(fake_imagenet):
    proc = dry_run_rules(fake_imagenet, REPO / "config/config.yaml")
    jobs = job_counts(proc.stdout)
    # center+flip and ten-crop; ten-crop on VQ-16 and at 32 x 32 (supplementary Tables 3, 2)
    assert jobs["shards"] == 4 and jobs["tokenize_part"] == 64
    # Table 4's four sizes, RAR-L included; supplementary Table 4 (`epochs`) adds RAR-L at 200
    # and 300 epochs (its 400-epoch row is Table 4's RAR-L run and evaluation), Table 3 RAR-L
    # on VQ-16, Table 2 RAR-L, XL and XXL at 512 px
    assert jobs["train"] == 20 + 3 + 4 + 2 + 1 + 3
    assert jobs["sweep_guidance"] == 20 and jobs["sample"] == 28 + 2 + 4
    # tables 2, 3, 4, epochs, llamagen_vq, imagenet512, official
    assert jobs["evaluate"] == 28 + 2 + 4 and jobs["table"] == 7
    # Table 5: four sizes in fp32, tf32 (the official sampler's precision) and bf16
    assert jobs["bench_sample"] == 4 * 3 and jobs["table5"] == 1


# -- the demo DAG at test scale --------------------------------------------------------------


def mini_demo(study: str) -> dict:
    """config/demo.yaml shrunk: 4 classes of 40 images, 2 epochs, 3 + 2 table rows."""
    config = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    config["study"] = study
    config["data"]["demo"].update(
        num_classes=4, images_per_class=40, val_per_class=8, test_per_class=4
    )
    config["data"].update(num_classes=4, source_images=160, images_per_part=80)
    config["tokenizer"]["train"].update(steps=20, batch_size=16)
    config["train"].update(epochs=2, global_batch=16, warmup_epochs=0.5, anneal_start=1)
    config["train"].update(anneal_end=2, log_every=2)
    config["sampling"].update(num_per_class=4, sweep_per_class=2, chunk_size=8)
    ablation = {
        "architecture": "plain",
        "crop": "center+flip",
        "sampling": {"guidance_schedule": "linear", "guidance_scales": [1.0, 4.0]},
    }
    config["tables"] = {
        "table2": {
            "base": ablation,
            "rows": [
                {"anneal_start": 0, "anneal_end": 0},
                {"anneal_start": 1, "anneal_end": 2},
                {"anneal_start": 2, "anneal_end": 2, "sampling": {"order": "random"}},
            ],
            "evaluate_epochs": [1],
        },
        "table3": {
            "base": {**ablation, "anneal_start": 1, "anneal_end": 2},
            "rows": [
                {"target_order": "row-major"},
                {"target_order": "z-curve", "sampling": {"order": "z-curve"}},
            ],
        },
    }
    return config


@pytest.fixture(scope="module")
def mini_grid(tmp_path_factory) -> tuple[Path, list[str]]:
    """The mini demo's DAG run once, and its HTML report (`report.html`) built: (its folder,
    the Snakemake arguments that name it). The tests that use it read the report first."""
    tmp_path = tmp_path_factory.mktemp("mini_grid")
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(mini_demo("mini"), sort_keys=False))
    args = ["-d", str(tmp_path), "--configfile", str(path), "--replace-workflow-config"]
    snakemake(*args, "--cores", "2", "--config", "launcher=local", timeout=1500)
    snakemake(*args, "--cores", "2", "--report", str(tmp_path / "report.html"))
    return tmp_path, args


@pytest.mark.slow
def test_demo_dag_end_to_end(mini_grid):
    tmp_path, args = mini_grid
    path = tmp_path / "mini.yaml"
    out = tmp_path / "results/mini"
    with open(out / "table2.csv") as f:
        everything = list(csv.DictReader(f))
    rows = [r for r in everything if r["kind"] == "row"]
    # the reference rows close the table, scored like the rows: floor, tokenizer, ceiling
    refs = {r["label"]: r for r in everything if r["kind"] == "reference"}
    assert list(refs) == [FLOOR, RECONSTRUCTED, CEILING]
    assert all(r["status"].startswith("ok") for r in refs.values())
    assert float(refs[FLOOR]["class_accuracy"]) >= 0.5  # real images: the probe knows them
    assert refs[FLOOR]["val_nll"] == "" and float(refs[CEILING]["val_nll"]) > 0
    # every row: its class accuracy, and its held-out NLL with an interval
    assert all(0 <= float(r["class_accuracy"]) <= 1 for r in rows)
    assert all(float(r["val_nll_ci_low"]) < float(r["val_nll"]) for r in rows)
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
    assert (tmp_path / "report.html").stat().st_size > 100_000  # with the tables and plots
    assert (out / "plots/table2_fid_vs_epoch.png").exists()
    # the trunk (2, 2) left its branch point; the branch (1, 2) started from it
    trunk = rows[2]["run"]
    assert (out / "runs" / trunk / "checkpoints/epoch_1.pt").exists()
    with open(out / "runs" / rows[1]["run"] / "metrics.csv") as f:
        first_logged_epoch = float(next(csv.DictReader(f))["epoch"])
    assert 1 < first_logged_epoch <= 1.5  # it trained from epoch 1 on, not from 0
    metrics = json.loads((out / "evals" / rows[0]["evaluation"] / "metrics.json").read_text())
    assert metrics["num_samples"] == 16 and not any(metrics["comparable_to_paper"].values())
    # the guidance sweep chose each row's scale, and the evaluation used it
    assert all(float(r["guidance_scale"]) in (1.0, 4.0) and r["guidance_sweep"] for r in rows)
    assert metrics["sampling"]["guidance_schedule"] == "linear"
    assert metrics["sampling"]["guidance_scale"] == float(rows[0]["guidance_scale"])
    assert (out / "plots/table2_guidance.png").stat().st_size > 1000

    # Every tool sees the study the workflow ran: rar status says everything is done, and
    # rar report rebuilds the workflow's tables byte for byte.
    from rar.cli import main

    tables = {p.name: p.read_bytes() for p in out.glob("table[23].*")}
    report = ["report", "--config", str(path), "--root", str(tmp_path)]
    assert main(report) == 0
    assert {p.name: p.read_bytes() for p in out.glob("table[23].*")} == tables
    status = subprocess.run(
        [
            sys.executable,
            "-m",
            "rar.cli",
            "status",
            "--config",
            str(path),
            "--root",
            str(tmp_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    state = json.loads(status.stdout)
    assert state["runs_done"] == state["runs_total"] == len(load_study(mini_demo("mini")).runs)
    assert state["evaluations_done"] == state["evaluations_total"]

    # A table made in the middle of a grid marks what is missing (rar report) in its own
    # file, and never replaces the finished one.
    scored = out / "evals" / rows[1]["evaluation"] / "metrics.json"
    scored.unlink()
    assert main([*report, "--table", "table2"]) == 0
    with open(out / "table2.partial.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)][1] == "missing"
    assert (out / "table2.csv").read_bytes() == tables["table2.csv"]
    # Snakemake leaves a missing file alone while everything made from it is up to date; named
    # as a target, that row is scored again (it alone), the table is rebuilt from it, and the
    # same samples give the same table
    local = ["--cores", "2", "--config", "launcher=local"]
    rescore = snakemake(*args, str(scored.relative_to(tmp_path)), *local)
    assert job_counts(rescore.stdout + rescore.stderr) == {"evaluate": 1, "total": 1}
    snakemake(*args, *local)
    assert (out / "table2.csv").read_bytes() == tables["table2.csv"]
    # a rerun has nothing to do
    again = snakemake(*args, "--cores", "2", "-n", "--config", "launcher=local")
    assert "Nothing to be done" in again.stdout + again.stderr
    # Adding an FID-vs-epoch point to a finished grid only adds its evaluation: the runs'
    # files are not rewritten, nothing is retrained or re-sampled.
    edited = mini_demo("mini")
    edited["tables"]["table3"]["evaluate_epochs"] = [1]
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
    more = snakemake(
        "-d",
        str(tmp_path),
        "--configfile",
        str(tmp_path / "edited.yaml"),
        "--replace-workflow-config",
        "-n",
        "--quiet",
        "rules",
        "--config",
        "launcher=local",
    )
    jobs = job_counts(more.stdout)
    assert {"train", "run_config", "sweep_guidance"}.isdisjoint(jobs), jobs
    assert jobs["fid_vs_epoch"] >= 1 and jobs["sample"] >= 1  # table3's z-curve row at 1
    # re-sampling, named, retrains and re-scores nothing; re-scoring, named, re-samples
    # nothing: a heavy stage reruns only when named (its inputs are ancient, so a forced job
    # does not cascade). The launcher in use is no reason to rerun.
    evaluations = load_study(mini_demo("mini")).evaluations.values()
    resample = snakemake(*args, "--cores", "2", "-n", "--quiet", "rules", "--forcerun", "sample")
    jobs = job_counts(resample.stdout)
    assert {"train", "sweep_guidance", "evaluate"}.isdisjoint(jobs), jobs
    # (the reference rows of real images and their reconstructions sample nothing)
    sampled = sum(e.kind in ("model", "untrained") for e in evaluations)
    assert jobs["sample"] == sampled == len(evaluations) - 2
    rescore = snakemake(*args, "--cores", "2", "-n", "--quiet", "rules", "--forcerun", "evaluate")
    jobs = job_counts(rescore.stdout)
    assert {"train", "sweep_guidance", "sample"}.isdisjoint(jobs), jobs
    assert jobs["evaluate"] == len(evaluations) and jobs["table"] == 2


@pytest.mark.chromium
@pytest.mark.slow
def test_the_html_report_opens_on_its_title_and_fits_its_tables_in_the_window(mini_grid, tmp_path):
    """The mini grid's Snakemake report in headless Chromium, in a 1400 x 1800 window: its
    first screen shows the title at the top, the study and how to read the tables; no table
    is wider than its column or the window; the rule graph comes after the tables."""
    page = page_geometry(mini_grid[0] / "report.html", tmp_path, width=1400, height=1800)
    width, height = page["width"], page["height"]  # the window less its bars
    title = next(b for b in page["blocks"] if b["text"].startswith("Randomized Autoregressive"))
    # the page's own column (the navigation bar sits to its left)
    column = [b for b in page["blocks"] if b["left"] >= title["left"]]
    assert column[0] == title and title["tag"] == "h1" and 0 <= title["top"] < 60
    first_screen = [b for b in column if b["bottom"] <= height]
    headings = [b["text"] for b in first_screen if b["tag"] == "h1"]
    assert headings[:3] == [title["text"], "The tables", "How to read them"], headings
    assert first_screen[1]["text"].startswith("This report reproduces the ablation tables of RAR")
    assert any(b["text"].startswith("FID [95% interval] (lower is better)") for b in first_screen)
    tables = page["tables"]
    assert [t["text"].split()[0] for t in tables] == ["anneal_start", "target_order"]
    for table in tables:
        assert table["width"] <= table["container"], table["text"]
        assert table["left"] >= 0 and table["right"] <= width, table["text"]
    graph = [b for b in column if b["tag"] == "canvas"]  # vega draws the rule graph
    assert graph and min(b["top"] for b in graph) > max(t["bottom"] for t in tables)


@pytest.mark.slow
def test_a_llamagen_style_tokenizer_runs_the_whole_dag(tmp_path):
    """The tokenizer interface end to end: the demo's data at 64 px through LlamaGen's VQ
    network (the official tiny weights of tests/data, in the release's `{"model": ...}`
    layout, named as a study names VQ-16) at the study's 4 x 4 grid: tokenize, train, sweep,
    sample, reconstruct, evaluate, table."""
    import torch

    tiny = torch.load(REPO / "tests/data/llamagen_vq_tiny.pt", weights_only=True)
    weights = tmp_path / "resources/vq_tiny.pt"
    weights.parent.mkdir()
    torch.save({"model": tiny["state_dict"]}, weights)
    config = mini_demo("llama")
    config["data"]["demo"]["image_size"] = 64  # the tiny VQ downsamples 16x: a 4 x 4 grid
    codebook = tiny["config"]["codebook_size"]
    config["tokenizer"] = {
        "name": "llamagen_vq16",
        "weights": str(weights),
        "codebook_size": codebook,
        "grid": 4,
    }
    table2 = config["tables"]["table2"]
    config["tables"] = {"table2": {**table2, "rows": table2["rows"][:2], "evaluate_epochs": []}}
    path = tmp_path / "llama.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    args = ["-d", str(tmp_path), "--configfile", str(path), "--replace-workflow-config"]
    snakemake(*args, "--cores", "2", timeout=1500)
    out = tmp_path / "results/llama"
    manifest = json.loads(next((tmp_path / "results/data").glob("*/manifest.json")).read_text())
    assert manifest["tokens_per_sample"] == 16
    assert (manifest["tokenizer"]["grid"], manifest["tokenizer"]["image_size"]) == (4, 64)
    with open(out / "table2.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5  # 2 rows, then the floor, the reconstructions, the ceiling
    assert all(r["status"].startswith("ok") and float(r["fid"]) > 0 for r in rows)
    for r in rows[:2]:
        samples = np.load(out / "evals" / r["evaluation"] / "samples.npz")
        assert samples["arr_0"].shape[1:] == (64, 64, 3)
        assert int(samples["arr_0"].std()) > 0  # decoded images, not a blank


@pytest.mark.slurm
@pytest.mark.slow
def test_demo_dag_through_the_slurm_launcher(tmp_path):
    """Every heavy stage of a small demo DAG as a real SLURM job, Snakemake waiting on them."""
    config = mini_demo("slurm")
    config["tables"] = {
        "table2": {
            "base": config["tables"]["table2"]["base"],  # with sweeps
            "rows": [
                {"anneal_start": 0, "anneal_end": 0},
                {"anneal_start": 1, "anneal_end": 2},
                {"anneal_start": 2, "anneal_end": 2},
            ],
        }
    }
    del config["throughput_table"]
    path = tmp_path / "slurm.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    launchers = tmp_path / "launch"
    launchers.mkdir()
    for stage in ("tokenize", "train", "sample", "evaluate"):
        settings = dict(
            backend="slurm",
            partition="debug",
            cpus_per_task=1,
            mem_gb=2,
            time_min=20,
            signal_delay_s=30,
            poll_s=1,
            folder=str(tmp_path / "submitit"),
        )
        (launchers / f"{stage}.yaml").write_text(yaml.safe_dump(settings))
    args = ["-d", str(tmp_path), "--configfile", str(path), "--replace-workflow-config"]
    snakemake(
        *args,
        "--cores",
        "2",
        "--config",
        "launcher=slurm",
        f"launcher_dir={launchers}",
        timeout=1500,
    )
    with open(tmp_path / "results/slurm/table2.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 + 3 and all(r["status"].startswith("ok") for r in rows)
    records = list((tmp_path / "results/slurm/runs").glob("*/job.json"))
    assert records and all(json.loads(r.read_text())["backend"] == "slurm" for r in records)


# -- no config string is ever executed --------------------------------------------------------


def _string_fields(obj, path=()):
    """Every (key path, value) of a string leaf in a config."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _string_fields(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _string_fields(v, (*path, i))
    elif isinstance(obj, str):
        yield path, obj


def _set(obj, path, value):
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def poison(config: dict, marker: Path) -> dict:
    """Poison every string field of `config` in place with the worst value the schema accepts
    there, each value unique (`p<i>`): shell syntax that would create `marker`, else a space,
    else a suffix; fields that admit none (names of orders, crops, models) are left as they
    are. Returns {key path: poisoned value}."""
    from rar.experiments import StudyError

    poisoned = {}
    for i, (path, value) in enumerate(list(_string_fields(config))):
        shell = f"{value} $(touch {marker}) `touch {marker}`; touch {marker} 'q\" p{i}"
        for candidate in (shell, f"{value} p{i}", f"{value}p{i}"):
            trial = copy.deepcopy(config)
            _set(trial, path, candidate)
            try:
                load_study(trial)
            except StudyError:
                continue
            _set(config, path, candidate)
            poisoned[path] = candidate
            break
    load_study(config)  # all of them at once, too
    return poisoned


def shell_commands(dry_run: str) -> dict[str, list[str]]:
    """rule -> the shell commands a `snakemake -n -p` run printed for its jobs."""
    commands: dict[str, list[str]] = {}
    rule = None
    for line in dry_run.splitlines():
        if m := re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line):
            rule = m[1]
        elif line.startswith("Shell command: ") and line != "Shell command: None":
            commands.setdefault(rule, []).append(line.removeprefix("Shell command: "))
    return commands


def test_no_config_string_reaches_a_shell(tmp_path):
    """With every string field of the config poisoned (`poison`), every shell command of every
    rule in the dry run parses back with each poisoned value inside one literal argument, and
    a real job whose command carries one (a path with a space) runs and creates no marker."""
    marker = tmp_path / "PWNED"
    config = mini_demo("inject")
    # The throughput table's models must name models (the schema takes any name; the rule then
    # has no input): that list stays unpoisoned.
    throughput = config.pop("throughput_table")
    config["evaluation"].update(weights="resources/w.pth", reference="resources/ref.npz")
    config["launcher_dir"] = str(tmp_path / "launch")
    config["official"] = {
        "rar_b": {"checkpoint": "resources/rar_b.bin", "sampling": {"preset": "rar_b"}}
    }
    config["tables"]["table2"]["description"] = "annealing"
    config["tables"]["table2"]["rows"][0]["label"] = "raster"
    poisoned = poison(config, marker)
    config["throughput_table"] = throughput
    shell_syntax = {p for p, v in poisoned.items() if "$(" in v}
    assert shell_syntax == {
        ("tables", "table2", "description"),
        ("tables", "table2", "rows", 0, "label"),
    }  # every other field refuses it (rar/experiments/study.schema.yaml)
    spaced = {p for p, v in poisoned.items() if " " in v} - shell_syntax
    assert spaced >= {
        ("launcher_dir",),
        ("evaluation", "weights"),
        ("official", "rar_b", "checkpoint"),
    }
    for path in (
        ("evaluation", "weights"),
        ("evaluation", "reference"),
        ("official", "rar_b", "checkpoint"),
    ):
        (tmp_path / poisoned[path]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / poisoned[path]).write_bytes(b"")  # present, so the dry run has a DAG
    path = tmp_path / "inject.yaml"
    path.write_text(yaml.safe_dump(config))
    args = ["-d", str(tmp_path), "--configfile", str(path), "--replace-workflow-config"]
    proc = snakemake("-n", "-p", *args, "--forceall")
    commands = shell_commands(proc.stdout)
    assert {"train", "sample", "evaluate", "tokenize_part", "bench_sample"} <= set(commands)
    reached = set()
    for rule, lines in commands.items():
        for line in lines:
            tokens = shlex.split(line)
            for key, value in poisoned.items():
                one_argument = any(value in t for t in tokens)  # quoted, whatever the quoting
                if value in line or one_argument:
                    assert one_argument, (rule, key, line)  # not split over arguments
                    reached.add(key)
            assert "touch" not in tokens, (rule, line)
    assert spaced <= reached  # each spaced value reached a command, and as one argument

    # A real job: rar bench-sample, its launcher file under the spaced launcher_dir.
    launch_dir = Path(poisoned[("launcher_dir",)])
    launch_dir.mkdir(parents=True)
    (launch_dir / "sample.yaml").write_text("backend: debug\n")
    target = f"results/{config['study']}/throughput/rar_tiny_fp32.csv"
    snakemake(*args, "--cores", "1", target)
    assert (tmp_path / target).exists() and not marker.exists()
