"""config/lite.yaml (docs/lite.md): Tables 2 and 3's questions within one 8-GPU node's two
days, on the paper study's own token data set, which both studies share and tokenize once."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from test_report import anneal_table
from test_workflow import dry_run_rules, fake_imagenet, job_counts, snakemake  # noqa: F401

from rar import report
from rar.experiments import DATA_ROOT, StudyError, format_plan, load_study, load_study_file
from rar.experiments.data_sets import SOURCE_JSON, read_source
from rar.experiments.schedule import training_jobs, wall_clock
from rar.settings.training import TrainConfig

REPO = Path(__file__).resolve().parents[1]
LITE, PAPER = REPO / "config/lite.yaml", REPO / "config/config.yaml"
ABLATION_DATA = "imagenet-maskgit_vqgan-center_flip"  # the ablations' center + flip tokens


def test_lite_fits_one_node_of_8_gpus_in_2_days():
    study = load_study_file(LITE)
    text = format_plan(study, gpus=8)
    hours = float(re.search(r"estimated: ([\d,.]+) GPU-hours", text)[1].replace(",", ""))
    assert hours <= 400
    wall = re.search(r"on 8 GPUs \(8 a training job\): ([\d.]+) hours of training", text)
    assert float(wall[1]) <= 48
    # the wall-clock is the schedule's: the trunk's three segments before its branches
    rates = {
        rid: study.gpu_hours_per_epoch()[run.config.model][0] for rid, run in study.runs.items()
    }
    total, chain = wall_clock(training_jobs(study), rates, gpus=8, gpus_per_run=8)
    assert total == pytest.approx(float(wall[1]), abs=0.05) and chain > 0
    trunk = next(r for r in study.runs.values() if r.kind == "trunk")
    assert trunk.segments == (10.0, 20.0, 30.0)


def test_lite_is_the_ablation_recipe_scaled():
    lite, paper = load_study_file(LITE), load_study_file(PAPER)
    for table in ("table2", "table3"):
        ours, theirs = lite.recipe(table), paper.recipe(table)
        assert ours == {**theirs, "samples": 10_000}  # plain ViT, center+flip, linear, sweep
    scale = lite.config["train"]["epochs"] / paper.config["train"]["epochs"]
    pairs = [(r.keys["anneal_start"], r.keys["anneal_end"]) for r in lite.tables["table2"]]
    paper_pairs = [(r.keys["anneal_start"], r.keys["anneal_end"]) for r in paper.tables["table2"]]
    assert pairs == [(s * scale, e * scale) for s, e in paper_pairs]
    runs = {lite.runs[r].config.model for r in lite.table_runs()}
    assert runs == {"rar_b"} and lite.config["evaluation"]["reference_rows"]
    assert lite.config["train"]["warmup_epochs"] == paper.config["train"]["warmup_epochs"] * scale


def test_lite_and_paper_share_the_ablation_data_set():
    lite, paper = load_study_file(LITE), load_study_file(PAPER)
    assert list(lite.datasets) == [ABLATION_DATA] and ABLATION_DATA in paper.datasets
    assert lite.data_dir(ABLATION_DATA) == paper.data_dir(ABLATION_DATA)
    assert paper.data_dir(ABLATION_DATA) == f"{DATA_ROOT}/{ABLATION_DATA}"  # where it always was
    assert lite.data_source(ABLATION_DATA).source == paper.data_source(ABLATION_DATA).source


def test_a_data_set_from_another_source_is_refused(tmp_path):
    paper = load_study_file(PAPER, root=tmp_path)
    paper.record_data_sources()
    folder = tmp_path / DATA_ROOT / ABLATION_DATA
    assert read_source(folder).study == "paper"
    assert load_study_file(LITE, root=tmp_path).data_clashes() == []
    config = yaml.safe_load(LITE.read_text())
    config["data"]["images_per_part"] = 1000  # other shards under the same name
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(config))
    (clash,) = load_study_file(other, root=tmp_path).data_clashes()
    assert clash.startswith(f"{DATA_ROOT}/{ABLATION_DATA}: data set made by study 'paper'")
    assert f"({PAPER.relative_to(REPO)})" in clash or str(PAPER) in clash
    assert "images_per_part: 5000 there, 1000 here" in clash and str(other) in clash
    from rar.ops.status import collect, format_status

    status = collect(load_study_file(other, root=tmp_path), root=tmp_path, use_slurm=False)
    assert status.failed and status.data_clashes == [clash]  # rar status exits 1
    assert f"\n  {clash}" in format_status(status)
    config["study"] = "data"  # its outputs would be the data sets' folder
    with pytest.raises(StudyError, match=r"^config: study: 'data' names results/data/, every"):
        load_study(config)
    (folder / SOURCE_JSON).write_text("{}")
    (broken,) = load_study_file(LITE, root=tmp_path).data_clashes()
    assert broken.startswith(f"{folder / SOURCE_JSON}: not a data set's source record")


def test_lite_dry_run_tokenizes_nothing_the_paper_made(fake_imagenet):  # noqa: F811
    jobs = job_counts(dry_run_rules(fake_imagenet, LITE).stdout)
    # 15 + 6 rows, table2 (20, 30) = table3 row-major: 20 runs, the trunk's segments at 10,
    # 20 and 30; a sweep and an evaluation per run, and the three reference rows both tables
    # share (the same real images, tokenizer and untrained trunk)
    assert jobs["train"] == 20 + 3 and jobs["sweep_guidance"] == 20
    assert jobs["evaluate"] == 20 + 3 and jobs["table"] == 2
    assert jobs["tokenize_part"] == 16 and jobs["shards"] == 1 and jobs["tokenize_val"] == 1
    folder = fake_imagenet / DATA_ROOT / ABLATION_DATA
    assert not (folder / SOURCE_JSON).exists()  # a dry run claims nothing
    # the paper's ablation data set, made and recorded: the lite study plans no tokenize job
    for made in ("manifest.json", "val/manifest.json", *(f"jobs/{j}.done" for j in range(16))):
        (folder / made).parent.mkdir(parents=True, exist_ok=True)
        (folder / made).write_text("{}")
    load_study_file(PAPER, root=fake_imagenet).record_data_sources()
    jobs = job_counts(dry_run_rules(fake_imagenet, LITE).stdout)
    assert {"tokenize_part", "shards", "tokenize_val"}.isdisjoint(jobs) and jobs["train"] == 23
    # recorded from another source: the workflow refuses the study, naming both
    record = json.loads((folder / SOURCE_JSON).read_text())
    record["source"]["images"] = "elsewhere/train"
    (folder / SOURCE_JSON).write_text(json.dumps(record))
    proc = snakemake("-n", "-d", str(fake_imagenet), "--configfile", str(LITE), check=False)
    assert proc.returncode != 0
    assert "data set made by study 'paper'" in proc.stderr + proc.stdout
    assert "'elsewhere/train' there, 'resources/imagenet/train' here" in proc.stderr + proc.stdout


def test_a_data_set_a_study_finished_in_its_own_folder_stays_there(fake_imagenet):  # noqa: F811
    """Before data sets were shared, a study other than the paper's kept them in
    results/<study>/data/. Its runs' ids hold that path: the finished data set stays where it
    is, so no run is planned again and nothing is tokenized again."""
    own = f"results/lite/data/{ABLATION_DATA}"
    shared = load_study_file(LITE, root=fake_imagenet)
    for made in ("manifest.json", "val/manifest.json"):
        (fake_imagenet / own / made).parent.mkdir(parents=True, exist_ok=True)
        (fake_imagenet / own / made).write_text("{}")
    kept = load_study_file(LITE, root=fake_imagenet)
    assert kept.data_dir(ABLATION_DATA) == own and shared.data_dir(ABLATION_DATA) != own
    assert {r.config.data for r in kept.runs.values()} == {own}
    before = {rid: {**run.config.to_dict(), "data": own} for rid, run in shared.runs.items()}
    assert {TrainConfig.from_dict(cfg).run_id() for cfg in before.values()} == set(kept.runs)
    jobs = job_counts(dry_run_rules(fake_imagenet, LITE).stdout)
    assert {"tokenize_part", "shards", "tokenize_val"}.isdisjoint(jobs) and jobs["train"] == 23


def test_a_run_records_the_sources_of_its_data_sets(fake_imagenet):  # noqa: F811
    """The workflow's first job claims the study's data sets (here a job that needs none of
    ImageNet: the scan-order figure)."""
    target = "results/lite/plots/scan_orders.png"
    snakemake("-d", str(fake_imagenet), "--configfile", str(LITE), "--cores", "1", target)
    record = read_source(fake_imagenet / DATA_ROOT / ABLATION_DATA)
    assert record.study == "lite" and record.source.images == "resources/imagenet/train"
    assert load_study_file(PAPER, root=fake_imagenet).data_clashes() == []


def test_lites_verdict_names_its_baselines(tmp_path):
    """The demo's verdict sentence ends lite's Table 2: raster-only (0, 0) and random-only at
    the end of its 40-epoch schedule, (40, 40)."""
    pairs = [
        (r.keys["anneal_start"], r.keys["anneal_end"])
        for r in load_study_file(LITE).tables["table2"]
    ]
    fids = {pair: 80.0 - i for i, pair in enumerate(pairs)}
    fids[(20, 30)], fids[(40, 40)] = 50.0, 75.0
    df, text = anneal_table(tmp_path, fids)
    verdict = report.anneal_verdict(df)
    assert (
        "in FID the best of 13 annealed rows, (20, 30), beats raster-only (0, 0), and " in verdict
    )
    assert "beats random-only (40, 40)" in verdict and text.rstrip().endswith(verdict)


def test_lites_gpu_hours_per_epoch_are_derived_as_its_config_says():
    """RAR-B's figure: RAR-L's measured eager bf16 TFLOP/s on one H200 (206.334,
    benchmarks/h200-2026-12-04.txt) over RAR-B's training FLOPs per image as the plain ViT;
    counted as MFU counts them (rar.settings.presets.GeneratorShape.train_flops_per_token)."""
    from rar.settings.presets import GeneratorShape

    per_image = GeneratorShape("rar_b", "plain").train_flops_per_token * 256
    assert per_image == pytest.approx(2.771e11, rel=1e-3)
    images_per_s = 206.334e12 / per_image
    config = yaml.safe_load(LITE.read_text())
    derived = config["data"]["source_images"] / (3600 * images_per_s)
    assert config["throughput"]["gpu_hours_per_epoch"]["rar_b"] == round(derived, 3)
    # the measured model: RAR-L as benchmarked (adaLN), 286 images/s
    rate = 206.334e12 / (GeneratorShape("rar_l").train_flops_per_token * 256)
    assert rate == pytest.approx(286.28, rel=1e-3)
