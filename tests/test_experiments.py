"""Studies: tables -> runs (deduplicated by id), evaluations, the trunk plan, config errors."""

from __future__ import annotations

import copy
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rar.experiments import (
    CEILING,
    FLOOR,
    RECONSTRUCTED,
    StudyError,
    estimate,
    format_plan,
    load_study,
    plan_dict,
    run_id,
)
from rar.experiments.schedule import TrainJob, wall_clock

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paper() -> dict:
    return yaml.safe_load((REPO / "config/config.yaml").read_text())


def tables_2_and_3(config: dict) -> dict:
    c = copy.deepcopy(config)
    c["tables"] = {k: v for k, v in c["tables"].items() if k in ("table2", "table3")}
    return c


def test_tables_2_and_3_need_20_runs_and_5400_epochs(paper):
    study = load_study(tables_2_and_3(paper))
    e = estimate(study)
    assert e["table_runs"] == 20 and e["runs"] == 20
    assert e["planned_epochs"] == 5400 and e["naive_epochs"] == 8000
    trunks = [r for r in study.runs.values() if r.kind == "trunk"]
    assert len(trunks) == 1 and trunks[0].segments == (100.0, 200.0, 300.0)
    assert trunks[0].config.checkpoint_epochs == (100.0, 200.0, 300.0)
    assert sum(r.kind == "scratch" for r in study.runs.values()) == 5  # anneal start 0


def test_shared_rows_are_one_run_and_the_recipes_are_two(paper):
    """Table 2's (200, 300) row is Table 3's raster row; Table 4's RAR-L is another run (the
    final recipe: adaLN, ten-crop), trained on another data set."""
    study = load_study(paper)
    t2 = next(
        r for r in study.tables["table2"] if r.keys == {"anneal_start": 200, "anneal_end": 300}
    )
    t3 = next(r for r in study.tables["table3"] if r.keys["target_order"] == "row-major")
    t4 = next(r for r in study.tables["table4"] if r.keys["model"] == "rar_l")
    assert t2.run == t3.run != t4.run
    ablation, final = study.runs[t2.run].config, study.runs[t4.run].config
    assert (ablation.architecture, final.architecture) == ("plain", "adaln")
    assert study.datasets[study.dataset_of(t2.run)].crop == "center+flip"
    assert study.datasets[study.dataset_of(t4.run)].crop == "tencrop"
    assert study.runs[t4.run].kind == "scratch"
    # the two recipes' crops; the supplementary's VQ-16 and 512 px ten-crop sets
    assert sorted(study.datasets) == [
        "imagenet-llamagen_vq16-tencrop",
        "imagenet-maskgit_vqgan-32x32-tencrop",
        "imagenet-maskgit_vqgan-center_flip",
        "imagenet-maskgit_vqgan-tencrop",
    ]


def test_the_plan_shows_each_tables_recipe(paper):
    study = load_study(paper)
    for table in ("table2", "table3"):
        recipe = study.recipe(table)
        assert recipe["architecture"] == "plain" and recipe["crop"] == "center+flip"
        assert recipe["guidance_schedule"] == "linear" and len(recipe["guidance_scales"]) > 1
    final = study.recipe("table4")
    assert (final["architecture"], final["crop"], final["guidance_schedule"]) == (
        "adaln",
        "tencrop",
        "pow-cosine",
    )
    text = format_plan(study)
    assert "table2: architecture plain ViT, crop center+flip, guidance linear (sweep" in text
    assert "table4: architecture adaLN (final), crop tencrop, guidance pow-cosine" in text


def test_a_table_plan_lists_its_rows_in_order_and_only_what_they_need(paper, tmp_path):
    """`rar plan --table T`: one line per row, label first and its run second, in the table's
    order; the missing files are those T needs (a released checkpoint serves `official`)."""
    study = load_study(paper, root=tmp_path)
    text = format_plan(study, tables=["table2"])
    lines = text[text.index("runs (") : text.index("by table")].splitlines()[1:]
    rows = study.tables["table2"]
    for line, row in zip(lines, rows, strict=True):
        assert line.lstrip().startswith(row.label) and row.run in line, (line, row.label)
    assert "official.rar_b.checkpoint" not in text and "tokenizer.weights" in text
    assert "official.rar_b.checkpoint" in format_plan(study, tables=["official"])
    assert "official.rar_b.checkpoint" in format_plan(study)
    demo = load_study(yaml.safe_load((REPO / "config/demo.yaml").read_text()))
    assert "20 runs (1 trunk, 14 branches), 1 data set" in format_plan(demo)


def test_sweeps_are_shared_and_feed_the_final_evaluation(paper):
    study = load_study(tables_2_and_3(paper))
    rows = study.tables["table2"] + study.tables["table3"]
    swept = [study.evaluations[r.evaluation] for r in rows]
    assert all(ev.sweep in study.sweeps for ev in swept)
    sweep = study.sweeps[swept[0].sweep]
    assert sweep.scales == (2.0, 4.0, 6.0, 8.0, 12.0)
    assert sweep.metrics["num_per_class"] == 10 and "guidance_scale" not in sweep.sampling
    # Table 2 (200, 300) and Table 3 row-major: one run, one evaluation, one sweep.
    assert len(study.sweeps) == len({ev.id for ev in swept}) == 20
    assert estimate(study)["sweep_samples"] == 20 * 5 * 10_000


def test_plan_json_lists_resolved_runs_and_evaluations(paper):
    plan = plan_dict(load_study(paper))
    json.dumps(plan)  # serialisable
    runs = {r["id"]: r for r in plan["runs"]}
    assert all(
        set(r["config"]) >= {"architecture", "model", "data", "epochs"} for r in runs.values()
    )
    t4_rar_l = next(r for r in plan["tables"]["table4"]["rows"] if r["keys"]["model"] == "rar_l")
    # not Table 2's (200, 300) run; supplementary Table 4's 400-epoch row is this run
    assert runs[t4_rar_l["run"]]["tables"] == ["epochs", "table4"]
    ev = next(e for e in plan["evaluations"] if e["sweep"])
    assert ev["sampling"]["guidance_schedule"] == "linear" and ev["num_samples"] == 50_000
    assert {d["crop"] for d in plan["datasets"]} == {"center+flip", "tencrop"}


PAPER_TABLES = ("table2", "table3", "table4")  # paper_tables.csv's ablations, by key


def test_paper_values_in_the_config_equal_the_papers_tables(paper):
    """Every number paper_tables.csv prints for Tables 2-4 is in the config's row whose run and
    sampling are that line's (anneal start and end, target and sampling order, model): rows are
    matched by what they train, not by position, so a row whose keys and values part fails."""
    ref = REPO / "tests/data/paper_tables.csv"
    study = load_study(paper)

    def describe(row) -> tuple:
        run = study.runs[row.run].config
        order = study.evaluations[row.evaluation].sampling["order"]
        return (run.anneal_start, run.anneal_end, run.target_order, order, run.model)

    lines = [line for line in csv.DictReader(ref.open()) if line["table"] in PAPER_TABLES]
    assert len(lines) == 25  # 15 + 6 + 4
    for line in lines:
        key = (
            float(line["anneal_start"]),
            float(line["anneal_end"]),
            line["target_order"],
            line["sampling_order"],
            line["model"].split()[0],
        )
        matches = [r for r in study.tables[line["table"]] if describe(r) == key]
        assert len(matches) == 1, (line["table"], key, len(matches))
        values = {m: float(line[m]) for m in ("fid", "is", "precision", "recall")}
        assert matches[0].paper == values, (line["table"], key)
        if line["table"] == "table4":  # the released checkpoints' rows print the same numbers
            official = [r for r in study.tables["official"] if r.keys["model"] == key[-1]]
            assert [r.paper for r in official] == [values], key
    assert len(study.tables["official"]) == 4


def test_supplementary_table4_paper_values_sit_on_their_schedules(paper):
    """paper_tables.csv's `epochs` lines (200, 300, 400 training epochs, in their notes) on
    the rows of table `epochs` whose runs train that long."""
    study = load_study(paper)
    for line in csv.DictReader((REPO / "tests/data/paper_tables.csv").open()):
        if line["table"] != "epochs":
            continue
        epochs = int(re.match(r"(\d+) training epochs", line["note"])[1])
        rows = [r for r in study.tables["epochs"] if study.runs[r.run].config.epochs == epochs]
        assert [r.paper for r in rows] == [{"fid": float(line["fid"])}], epochs


# paper_tables.csv's supplementary Tables 2 and 3, by key: each run's tokens, codebook and
# epochs, and the reference batch its rows are scored against ("": the study's).
SUPPLEMENTARY = {
    "imagenet512": (32 * 32, 1024, 200, "resources/VIRTUAL_imagenet512.npz"),
    "llamagen_vq": (16 * 16, 16384, 400, ""),
}


def test_supplementary_tables_paper_values_sit_on_their_tokenizers_and_schedules(paper):
    """paper_tables.csv's `imagenet512` and `llamagen_vq` lines on the row of their model,
    whose run is the final recipe on the table's tokenizer (MaskGIT-VQGAN at 32 x 32; VQ-16)
    for the paper's epochs; ImageNet-512's 200-epoch schedule is the `epochs` table's."""
    study = load_study(paper)
    lines = [
        line
        for line in csv.DictReader((REPO / "tests/data/paper_tables.csv").open())
        if line["table"] in SUPPLEMENTARY
    ]
    assert len(lines) == 4 == sum(len(study.tables[t]) for t in SUPPLEMENTARY)
    short = next(r for r in study.tables["epochs"] if study.runs[r.run].config.epochs == 200)
    short = study.runs[short.run].config
    final = {
        r.keys["model"]: study.evaluations[r.evaluation].sampling for r in study.tables["table4"]
    }
    for line in lines:
        table, model = line["table"], line["model"].split()[0]
        rows = [r for r in study.tables[table] if study.runs[r.run].config.model == model]
        values = {m: float(line[m]) for m in ("fid", "is", "precision", "recall") if line[m]}
        assert [r.paper for r in rows] == [values], (table, model)
        cfg, ev = study.runs[rows[0].run].config, study.evaluations[rows[0].evaluation]
        tokens, codebook, epochs, reference = SUPPLEMENTARY[table]
        assert (cfg.num_tokens, cfg.codebook_size, cfg.epochs) == (tokens, codebook, epochs)
        assert (cfg.architecture, study.datasets[study.dataset_of(cfg.run_id())].crop) == (
            "adaln",
            "tencrop",
        )
        assert ev.sampling == final[model]  # table4's, each size's preset
        assert ev.metrics["reference"] == (reference or paper["evaluation"]["reference"])
        if line["anneal_start"]:
            assert (cfg.anneal_start, cfg.anneal_end) == (
                float(line["anneal_start"]),
                float(line["anneal_end"]),
            )
        if epochs == 200:
            schedule = ("warmup_epochs", "anneal_start", "anneal_end")
            assert [getattr(cfg, k) for k in schedule] == [getattr(short, k) for k in schedule]


def test_table5_lists_all_four_sizes_with_the_papers_figures(paper):
    """Table 5's four sizes with the paper's images/s (tests/data/paper_table5.csv), timed in
    fp32, in the official sampler's tf32 and in bf16."""
    with (REPO / "tests/data/paper_table5.csv").open() as f:
        expected = {r["model"]: float(r["images_per_s"]) for r in csv.DictReader(f)}
    bench = load_study(paper).config["throughput_table"]
    assert bench["paper"] == expected
    assert bench["models"] == list(expected) == ["rar_b", "rar_l", "rar_xl", "rar_xxl"]
    assert bench["dtypes"] == ["fp32", "tf32", "bf16"] and bench["batch_size"] == 128


def test_supplementary_table4_is_rar_l_final_recipe_at_three_lengths(paper):
    """200, 300 and 400 epochs, each a full schedule, the 400-epoch run's warmup and
    annealing points (100; 200, 300) scaled in proportion; the 400-epoch row is Table 4's
    RAR-L run and evaluation, so the study trains two more runs for it."""
    study = load_study(paper)
    rows = study.tables["epochs"]
    t4 = next(r for r in study.tables["table4"] if r.keys["model"] == "rar_l")
    for row in rows:
        cfg = study.runs[row.run].config
        e = cfg.epochs
        assert (cfg.model, cfg.architecture) == ("rar_l", "adaln")
        assert (cfg.warmup_epochs, cfg.anneal_start, cfg.anneal_end) == (e / 4, e / 2, 3 * e / 4)
        assert study.runs[row.run].kind == "scratch"
        assert (
            study.evaluations[row.evaluation].sampling == study.evaluations[t4.evaluation].sampling
        )
    assert [study.runs[r.run].config.epochs for r in rows] == [200, 300, 400]
    assert rows[-1].run == t4.run and rows[-1].evaluation == t4.evaluation
    assert study.runs[rows[0].run].config.data == study.runs[t4.run].config.data  # ten-crop
    assert len({r.run for r in rows}) == 3


def test_the_purely_random_row_is_the_trunk_and_samples_in_random_order(paper):
    study = load_study(paper)
    row = study.tables["table2"][-1]
    assert study.runs[row.run].kind == "trunk"
    assert study.evaluations[row.evaluation].sampling["order"] == "random"


def test_branches_start_from_their_anneal_start(paper):
    study = load_study(paper)
    for row in study.tables["table2"]:
        run = study.runs[row.run]
        start = run.config.anneal_start
        if run.kind == "branch":
            assert run.branch_epoch == start and study.runs[run.trunk].kind == "trunk"
        elif run.kind == "scratch":
            assert start == 0


def _trunk_at(study, *, kept: tuple[float, ...], reached: float, tmp_path: Path) -> Path:
    """A folder where Table 2's trunk has kept `kept` and trained to `reached` (its
    metrics.csv's last row)."""
    trunk = next(r for r in study.runs.values() if r.kind == "trunk")
    folder = tmp_path / study.run_dir(trunk.id) / "checkpoints"
    folder.mkdir(parents=True)
    for epoch in kept:
        (folder / f"epoch_{epoch:g}.pt").write_bytes(b"")
    (folder.parent / "metrics.csv").write_text(
        f"step,epoch,loss,accuracy,lr,ratio,grad_norm,tokens_per_s,images_per_s,elapsed_s\n"
        f"1,{reached},1,0,0,1,0,0,0,1\n"
    )
    return tmp_path


def test_a_branch_point_the_trunk_passed_branches_from_its_last_kept_checkpoint(paper, tmp_path):
    """Table 2's trunk kept epoch 100 and trained to 250: a row added at 150 or 200 or 220
    (no checkpoint there) cannot have the trunk go back; it branches from epoch 100 with a
    note. 300, not reached yet, stays a segment; 200's checkpoint was kept: a branch there."""
    config = copy.deepcopy(paper)
    config["tables"] = {"table2": config["tables"]["table2"]}
    config["tables"]["table2"]["rows"].append({"anneal_start": 150, "anneal_end": 300})
    root = _trunk_at(load_study(config), kept=(100, 200), reached=250, tmp_path=tmp_path)
    study = load_study(config, root=root)
    trunk = next(r for r in study.runs.values() if r.kind == "trunk")
    starts = {}
    for row in study.tables["table2"]:
        run = study.runs[row.run]
        starts[run.config.anneal_start] = (run.kind, run.branch_epoch, run.note)
    assert starts[150][:2] == ("branch", 100) and "passed epoch 150" in starts[150][2]
    assert starts[200] == ("branch", 200, None) and starts[300] == ("branch", 300, None)
    assert trunk.segments == (100, 200, 300)
    # nothing on disk: 150 is a segment like any other
    assert load_study(config).runs[trunk.id].segments == (100, 150, 200, 300)


def test_a_passed_branch_point_with_nothing_kept_before_it_trains_from_scratch(paper, tmp_path):
    config = copy.deepcopy(paper)
    config["tables"] = {"table2": config["tables"]["table2"]}
    config["tables"]["table2"]["rows"].append({"anneal_start": 50, "anneal_end": 300})
    root = _trunk_at(load_study(config), kept=(100,), reached=120, tmp_path=tmp_path)
    run = load_study(config, root=root).runs[load_study(config).tables["table2"][-1].run]
    assert run.kind == "scratch" and "passed epoch 50" in run.note
    assert run.epochs_to_train == run.config.epochs


def test_a_trunk_no_row_needs_is_charged_to_its_last_branch_point(paper):
    config = copy.deepcopy(paper)
    rows = [{"target_order": o} for o in ("row-major", "spiral-in", "z-curve")]
    config["tables"] = {"scan": {"base": {"model": "rar_b"}, "rows": rows}}
    study = load_study(config)
    trunk = next(r for r in study.runs.values() if r.kind == "trunk")
    assert (trunk.segments, trunk.until, trunk.epochs_to_train) == ((200,), 200, 200)


def test_keep_every_keeps_trunk_checkpoints_only(paper):
    config = copy.deepcopy(paper)
    config["trunks"] = {"keep_every": 50}
    study = load_study(config)
    for run in study.runs.values():
        kept = set(run.config.checkpoint_epochs)
        if run.kind == "trunk":
            assert {50, 100, 150, 200, 250, 300, 350} <= kept and 400 not in kept
        else:
            assert not {50, 150, 250, 350} & kept


def test_a_run_folder_holding_another_runs_settings_is_named(paper, tmp_path):
    study = load_study(paper, root=tmp_path)
    first, second = list(study.runs.values())[:2]
    for run, settings in ((first, first), (second, first)):  # second's folder: first's file
        (tmp_path / study.run_dir(run.id)).mkdir(parents=True)
        settings.config.save(tmp_path / study.run_dir(run.id) / "config.yaml")
    assert study.misfiled_runs() == [
        f"{tmp_path / study.run_dir(second.id)}/config.yaml: the settings of run {first.id}, "
        f"in the folder of run {second.id}"
    ]


def test_wall_clock_waits_for_the_trunk_and_shares_the_gpus():
    """A trunk of two segments (100 epochs each), two branches from its first segment end
    (100 epochs each) and a run from scratch (200 epochs), 1 GPU-hour per epoch on 1 GPU a
    job: the chain trunk -> branch is 200 hours; with 4 GPUs nothing waits but for the
    trunk, with 3 one of the three jobs after the first segment waits for a GPU, with 1
    everything runs in turn (600 hours)."""
    jobs = [
        TrainJob("t", 0, 100, None),
        TrainJob("t", 100, 200, ("t", 100)),
        TrainJob("a", 100, 200, ("t", 100)),
        TrainJob("b", 100, 200, ("t", 100)),
        TrainJob("s", 0, 200, None),
    ]
    rate = dict.fromkeys("tabs", 1.0)
    assert wall_clock(jobs, rate, gpus=4, gpus_per_run=1) == (200, 200)
    assert wall_clock(jobs, rate, gpus=3, gpus_per_run=1) == (300, 200)
    assert wall_clock(jobs, rate, gpus=1, gpus_per_run=1) == (600, 200)
    assert wall_clock(jobs, rate, gpus=2, gpus_per_run=1) == (300, 200)
    assert wall_clock(jobs, rate, gpus=8, gpus_per_run=2) == (100, 100)


def test_a_lone_branch_trains_from_scratch(paper):
    """Table 4's B/XL/XXL runs would each need a trunk of their own: not worth it."""
    study = load_study(paper)
    for row in study.tables["table4"]:
        if row.keys["model"] != "rar_l":
            assert study.runs[row.run].kind == "scratch"


def test_run_ids_ignore_checkpoint_bookkeeping(paper):
    study = load_study(paper)
    run = next(iter(study.runs.values()))
    from dataclasses import replace

    assert run_id(replace(run.config, checkpoint_epochs=(1.0,), log_every=7)) == run.id
    assert run_id(replace(run.config, seed=1)) != run.id


def test_sampling_presets_apply_per_row(paper):
    study = load_study(paper)
    b = next(r for r in study.tables["table4"] if r.keys["model"] == "rar_b")
    s = study.evaluations[b.evaluation].sampling
    assert (s["guidance_scale"], s["guidance_power"], s["temperature"]) == (16.0, 2.75, 1.0)


ROW = r"tables\.table2\.rows\[0\]"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"target_order": "hilbert"}, ROW + r": target_order: unknown scan order 'hilbert'"),
        ({"anneal_start": 300, "anneal_end": 200}, ROW + r".*anneal_start 300.0 > anneal_end"),
        ({"anneal_end": 500}, ROW + r".*anneal_end 500.0 > epochs 400.0"),
        ({"model": "rar_q"}, ROW + r": model: unknown model size 'rar_q'"),
        ({"epochz": 3}, ROW + r": unknown key\(s\) 'epochz'"),
        ({"global_batch": "big"}, ROW + r": key 'global_batch' must be int"),
        ({"architecture": "vit"}, ROW + r": architecture: unknown architecture 'vit'"),
        ({"crop": "fivecrop"}, ROW + r"\.crop: 'fivecrop' is not one of"),
        ({"paper": {"fdi": 2.0}}, ROW + r"\.paper: unknown key\(s\) 'fdi'"),
        (
            {"sampling": {"guidance_schedule": "cubic"}},
            ROW + r".*unknown guidance schedule 'cubic'",
        ),
        ({"sampling": {"guidance_scales": []}}, ROW + r"\.sampling\.guidance_scales: \[\] should"),
        ({"sampling": {"order": "hilbert"}}, ROW + r": sampling.order: unknown order 'hilbert'"),
        ({"codebook_size": 16384}, ROW + r": codebook_size follow from `data` and the tokenizer"),
        ({"num_tokens": 1024}, ROW + r": num_tokens follow from `data` and the tokenizer"),
        ({"tokenizer": {"gird": 32}}, ROW + r"\.tokenizer: unknown key\(s\) 'gird'"),
        ({"tokenizer": {"grid": 2}}, ROW + r"\.tokenizer\.grid: 2 is less than"),
        ({"evaluation": {"extractor": "x"}}, ROW + r"\.evaluation: unknown key\(s\) 'extractor'"),
        ({"sampling": {"chunk_size": 0}}, ROW + r"\.sampling\.chunk_size: 0 is less than"),
        ({"sampling": {"num_per_class": 5}}, ROW + r"\.sampling: unknown key\(s\) 'num_per_class'"),
    ],
)
def test_bad_rows_name_file_key_and_value(paper, row, message):
    c = copy.deepcopy(paper)
    c["tables"] = {"table2": {"rows": [row]}}
    with pytest.raises(StudyError, match="^my.yaml: " + message):
        load_study(c, source="my.yaml")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(tabels={}), r"\(top level\): unknown key\(s\) 'tabels'"),
        (lambda c: c["train"].update(epochs=-1), r"train.*epochs"),
        (lambda c: c["train"].update(target_order="hilbert"), r"train: target_order: unknown scan"),
        (lambda c: c["sampling"].update(order="hilbert"), r"unknown order 'hilbert'"),
        (
            lambda c: c["sampling"].update(num_per_class="50"),
            r"sampling.num_per_class: '50' is not",
        ),
        (
            lambda c: c["data"].update(images="imgs$(touch x)"),
            r"data.images: 'imgs\$\(touch x\)' has",
        ),
        (
            lambda c: c["official"]["rar_b"].update(paper={"fdi": 1}),
            r"official.rar_b.paper: unknown",
        ),
        (
            lambda c: c["tables"]["table2"]["rows"].append(dict(c["tables"]["table2"]["rows"][0])),
            r"tables.table2.rows\[15\]: the same run and evaluation as tables.table2.rows\[0\]",
        ),
    ],
)
def test_bad_configs_are_refused_before_any_work(paper, edit, message):
    c = copy.deepcopy(paper)
    edit(c)
    with pytest.raises(StudyError, match="^config.yaml: .*" + message):
        load_study(c, source="config.yaml")


def test_every_tool_sees_the_same_study_defaults_filled(paper):
    """The raw YAML and the schema-filled config resolve to the same ids (the Snakefile gets
    the same dict load_study_file reads), and defaults come from the schema."""
    raw = load_study(paper)
    filled = load_study(raw.config)
    assert raw.evaluations.keys() == filled.evaluations.keys()
    assert raw.runs.keys() == filled.runs.keys()
    assert raw.config["evaluation"]["reference"] == paper["evaluation"]["reference"]
    assert raw.config["launcher"] == "debug" and raw.config["sampling"]["chunk_size"] == 250
    assert raw.name == "paper"  # not the last official checkpoint's name


def test_the_schema_names_what_the_package_knows():
    import yaml as _yaml

    from rar.settings.presets import GUIDANCE_SCHEDULES

    schema = _yaml.safe_load((REPO / "rar/experiments/study.schema.yaml").read_text())
    crops = schema["$defs"]["crop"]["enum"]
    from rar.experiments import CROPS

    assert sorted(crops) == sorted(CROPS)
    assert "guidance_schedule" in schema["$defs"]["sampling_keys"]["properties"]
    assert GUIDANCE_SCHEDULES == ("constant", "linear", "pow-cosine")


def test_official_checkpoints_are_scored_without_training(paper):
    study = load_study(paper)
    rows = study.tables["official"]
    assert [r.label for r in rows] == ["rar_b", "rar_l", "rar_xl", "rar_xxl"]
    ev = study.evaluations[rows[0].evaluation]
    assert ev.checkpoint == "resources/rar_b.bin" and ev.sampling["guidance_scale"] == 16.0
    assert rows[0].paper["fid"] == 1.95
    assert not any(r.run in study.runs for r in rows)


def test_plan_is_printed_without_torch(paper, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tables_2_and_3(paper)))
    code = (
        "import sys, yaml; from rar.experiments import load_study, format_plan; "
        f"print(format_plan(load_study(yaml.safe_load(open({str(path)!r})))));"
        "assert 'torch' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert "5400 epochs planned vs 8000" in out.stdout
    assert "GPU-hours" in format_plan(load_study(paper))


def test_a_branch_scores_early_epochs_on_its_trunk(paper):
    c = tables_2_and_3(paper)
    c["tables"]["table2"]["evaluate_epochs"] = [100, 300]
    study = load_study(c)
    row = next(
        r for r in study.tables["table2"] if r.keys == {"anneal_start": 200, "anneal_end": 300}
    )
    run = study.runs[row.run]
    trunk = study.runs[run.trunk]
    assert study.checkpoint(run.id, 100) == study.checkpoint(trunk.id, 100)  # before the branch
    assert study.checkpoint(run.id, 300).startswith(study.run_dir(run.id))
    assert 300.0 in run.config.checkpoint_epochs and 100.0 not in run.config.checkpoint_epochs
    assert 100.0 in trunk.config.checkpoint_epochs


def test_settings_outside_the_identity_may_change_in_flight(paper):
    """What a running job may be handed (`rar train --settings`): only OUTSIDE_IDENTITY keys,
    which leave the run id alone; anything else would be another run and is refused."""
    from rar.settings.training import OUTSIDE_IDENTITY

    run = next(iter(load_study(paper).runs.values()))
    edited = run.config.with_settings(
        {"checkpoint_epochs": [150], "log_every": 7, "compile": True}, source="test"
    )
    assert edited.checkpoint_epochs == (150.0,) and edited.run_id() == run.id
    assert {"checkpoint_epochs", "compile"} <= OUTSIDE_IDENTITY
    with pytest.raises(ValueError, match="test: seed would make it another run"):
        run.config.with_settings({"seed": 1}, source="test")


def test_reference_rows_follow_each_table_and_train_nothing():
    demo = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    study = load_study(demo)
    assert demo["evaluation"]["reference_rows"]
    for table in study.tables:
        rows = study.report_rows(table)
        assert [r["label"] for r in rows[-3:]] == [FLOOR, RECONSTRUCTED, CEILING]
        assert [r["kind"] for r in rows] == ["row"] * len(study.tables[table]) + ["reference"] * 3
        assert len(study.metrics_files(table)) == len(rows)
        floor, tokens, ceiling = (study.evaluations[r["evaluation"]] for r in rows[-3:])
        # the floor scores real images the models never saw; no run, no sampling
        assert (floor.kind, floor.run, floor.images) == ("real", "", "results/demo/images/test")
        assert study.samples_of(floor.id) == floor.images
        # the same images through the tokenizer and back
        assert (tokens.kind, tokens.images) == ("reconstructed", floor.images)
        assert study.samples_of(tokens.id) == f"results/demo/reconstructions/{tokens.id}.npz"
        # the ceiling samples the initial weights of the table's first run (of any run that
        # starts from the same weights: Tables 2 and 3 share one), one scale, no sweep
        first = study.tables[table][0]
        assert (ceiling.kind, ceiling.sweep) == ("untrained", None)
        trunk = study.runs[first.run].config.trunk_key()
        assert study.runs[ceiling.run].config.trunk_key() == trunk
        assert ceiling.checkpoint == study.untrained_checkpoint(ceiling.run)
        assert ceiling.sampling["guidance_scale"] == min(
            study.evaluations[first.evaluation].sampling["guidance_scales"]
        )
    # nothing new to train; the paper's study has no reference rows unless it asks
    without = load_study({**demo, "evaluation": {**demo["evaluation"], "reference_rows": False}})
    assert without.runs.keys() == study.runs.keys() and not without.references


def test_the_floor_needs_as_many_real_images_as_a_rows_samples():
    demo = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    demo["data"]["demo"]["test_per_class"] = 5
    with pytest.raises(StudyError, match=r"data.demo.test_per_class: 5.*set test_per_class: 20"):
        load_study(demo)


def test_the_study_names_every_report_file(paper):
    """What the report rules read and make comes from the study, not from the rule files."""
    study = load_study(paper)
    assert study.plot_kind("table2") == {"plot": "heatmap"}
    assert study.plot_kind("table3") == {"plot": "bars", "key": "target_order"}
    logs = study.training_logs("table2")
    assert len(logs) == len(study.table_runs("table2")) == 15
    assert logs[0]["metrics_csv"] == f"results/runs/{study.tables['table2'][0].run}/metrics.csv"
    assert [g["label"] for g in study.grids("table3")] == [r.label for r in study.tables["table3"]]
    assert len(study.sweep_points("table2")) == 15  # every ablation row picks its scale
    outputs = study.outputs()
    assert {"results/table2.csv", "results/plots/table2_guidance.png"} <= set(outputs)
    assert "results/plots/scan_orders.png" in outputs
    for point in study.curve_points("table2"):  # each curve ends at its run's final epoch
        assert point["metrics"].endswith("/metrics.json") and point["epoch"] > 0


def test_one_tokenizer_name_and_grid_is_one_tokenizer(paper):
    """Two tables whose tokenizers share a name and grid but not their weights would share a
    data set folder: refused, naming the row."""
    c = copy.deepcopy(paper)
    vq = {"name": "llamagen_vq16", "codebook_size": 16384}
    c["tables"] = {
        name: {"base": {"tokenizer": {**vq, "weights": weights}}, "rows": [{"model": "rar_b"}]}
        for name, weights in (("vq", "resources/vq_ds16_c2i.pt"), ("mine", "resources/my.pt"))
    }
    with pytest.raises(StudyError, match=r"tables.mine.rows\[0\]: tokenizer 'llamagen_vq16'"):
        load_study(c, source="config.yaml")


def test_a_study_that_trains_its_tokenizer_has_no_other():
    demo = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    table = next(iter(demo["tables"]))
    demo["tables"][table].setdefault("base", {})["tokenizer"] = {"grid": 4}
    with pytest.raises(StudyError, match=rf"tables.{table}.rows\[0\]: tokenizer: the study trains"):
        load_study(demo, source="demo.yaml")


def test_the_plan_charges_the_supplementary_tables_their_tokens(paper):
    """`rar plan` lists supplementary Tables 2 and 3 with their runs and GPU-hours: a size's
    rate (measured at the study's 256 tokens and 1,024 codes) scaled by the training FLOPs at
    the run's own (`GeneratorShape.forward_flops`, adaLN as these tables train): ~4.3 x at
    1,024 tokens, ~3% more at 16,384 codes."""
    from rar.settings.presets import GeneratorShape

    study = load_study(paper)
    rates = paper["throughput"]["gpu_hours_per_epoch"]
    archs = {
        study.runs[r].config.architecture
        for t in ("llamagen_vq", "imagenet512")
        for r in study.table_runs(t)
    }
    assert archs == {"adaln"}

    def hours(model: str, epochs: float, tokens: int, codebook: int) -> float:
        flops = GeneratorShape(model, num_tokens=tokens, codebook_size=codebook).forward_flops
        ratio = flops / GeneratorShape(model).forward_flops
        return rates[model] * epochs * ratio

    assert 4.3 < hours("rar_l", 1, 1024, 1024) / rates["rar_l"] < 4.35
    assert 1.03 < hours("rar_l", 1, 256, 16384) / rates["rar_l"] < 1.04
    vq = hours("rar_l", 400, 256, 16384)
    big = sum(hours(m, 200, 1024, 1024) for m in ("rar_l", "rar_xl", "rar_xxl"))
    text = format_plan(study)
    assert f"  llamagen_vq: 1 rows, 1 runs, 400 epochs, {vq:,.0f} GPU-hours" in text
    assert f"  imagenet512: 3 rows, 3 runs, 600 epochs, {big:,.0f} GPU-hours" in text
    datasets = {d["name"] for d in plan_dict(study)["datasets"]}
    assert {"imagenet-llamagen_vq16-tencrop", "imagenet-maskgit_vqgan-32x32-tencrop"} <= datasets


def test_a_tables_chunk_size_is_its_sample_sets_and_in_no_id(paper):
    """The paper's `imagenet512` table sets `sampling: {chunk_size: 50}` (1,024-token KV
    caches: docs/gpu.md); its evaluations' and every other table's ids are those of the config
    without it, and the other tables sample in the study's chunks."""
    from rar.experiments.build import chunk_size_of

    study = load_study(paper)
    without = copy.deepcopy(paper)
    del without["tables"]["imagenet512"]["base"]["sampling"]
    plain = load_study(without)
    assert sorted(study.evaluations) == sorted(plain.evaluations)
    assert sorted(study.sweeps) == sorted(plain.sweeps)
    chunks = {
        t: {chunk_size_of(study.config, study.evaluations[r.evaluation].metrics) for r in rows}
        for t, rows in study.tables.items()
    }
    assert chunks.pop("imagenet512") == {50}
    assert set().union(*chunks.values()) == {paper["sampling"]["chunk_size"]} == {250}
