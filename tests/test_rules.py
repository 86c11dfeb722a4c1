"""rar.experiments.rules: the input and params functions of the workflow's rules, called the
way Snakemake calls them (a `wildcards` object, and `input` where a params function needs it)."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path
from types import SimpleNamespace as W

import pytest
import yaml

from rar.experiments import load_study
from rar.experiments.rules import RuleWiring, one_of
from rar.settings.training import OUTSIDE_IDENTITY

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paper() -> RuleWiring:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    return RuleWiring(load_study(config))


@pytest.fixture(scope="module")
def demo() -> RuleWiring:
    return RuleWiring(load_study(yaml.safe_load((REPO / "config/demo.yaml").read_text())))


def _runs(wiring: RuleWiring, kind: str) -> list:
    return [r for r in wiring.study.runs.values() if r.kind == kind]


def test_a_trunk_trains_in_segments_each_from_the_last(paper):
    study = paper.study
    trunk = _runs(paper, "trunk")[0]
    first, second = trunk.segments[:2]
    start = W(run=trunk.id, stop=f"epoch_{first:g}")
    assert paper.stop_epoch(start) == first
    assert paper.train_start(start) == []  # the first segment starts from scratch
    assert paper.train_args(start, W(start=[])) == ["--until-epoch", f"{first:g}"]
    follow = W(run=trunk.id, stop=f"epoch_{second:g}")
    assert paper.train_start(follow) == study.checkpoint(trunk.id, first)
    last = W(run=trunk.id, stop="final")
    assert paper.stop_epoch(last) == trunk.config.epochs
    assert paper.train_start(last) == study.checkpoint(trunk.id, trunk.segments[-1])
    assert paper.train_args(last, W(start="ckpt.pt")) == ["--init-from", "ckpt.pt"]


def test_a_branch_starts_from_its_trunk_and_a_scratch_run_from_nothing(paper):
    branch = _runs(paper, "branch")[0]
    wc = W(run=branch.id, stop="final")
    assert paper.train_start(wc) == paper.study.checkpoint(branch.trunk, branch.branch_epoch)
    scratch = _runs(paper, "scratch")[0]
    assert paper.train_start(W(run=scratch.id, stop="final")) == []
    assert paper.train_args(W(run=scratch.id, stop="final"), W(start=[])) == []


def test_a_runs_file_holds_its_identity_and_the_job_the_rest(paper):
    run = next(iter(paper.study.runs.values()))
    wc = W(run=run.id)
    written = paper.run_config_dict(wc)
    assert not set(written) & OUTSIDE_IDENTITY and "model" in written
    flag, settings = shlex.split(paper.train_settings(wc))
    assert flag == "--settings" and set(json.loads(settings)) <= OUTSIDE_IDENTITY
    assert json.loads(settings)["checkpoint_epochs"] == list(run.config.checkpoint_epochs)
    assert paper.untrained_run_config(wc) == f"results/runs/{run.id}/config.yaml"


def test_data_inputs_follow_the_run(paper, demo):
    run = next(iter(paper.study.runs.values()))
    data = paper.study.data_dir(paper.study.dataset_of(run.id))
    assert paper.manifest_of_run(W(run=run.id)) == f"{data}/manifest.json"
    assert paper.heldout_of_run(W(run=run.id)) == f"{data}/val/manifest.json"  # val_every: 10
    dataset = paper.study.dataset_of(run.id)
    assert paper.dataset_crop(W(dataset=dataset)) == paper.study.datasets[dataset].crop
    # the paper links its images and the released tokenizer; the demo makes both
    assert (
        paper.image_marker() == []
        and paper.tokenizer_file() == paper.config["tokenizer"]["weights"]
    )
    assert demo.image_marker() == "results/demo/images/dataset.json"
    assert demo.tokenizer_file().startswith("results/demo/tokenizer/")
    assert demo.image_dir() == "results/demo/images/train"
    assert demo.heldout_image_dir() == "results/demo/images/val"


def test_a_run_without_validation_needs_no_heldout_tokens(paper):
    config = copy.deepcopy(paper.config)
    config["train"]["val_every"] = 0
    wiring = RuleWiring(load_study(config))
    run = next(iter(wiring.study.runs))
    assert wiring.heldout_of_run(W(run=run)) == []


def test_sampling_arguments_take_the_sweeps_scale_or_the_rows(paper):
    ev = next(e for e in paper.study.evaluations.values() if e.sweep)
    wc = W(evaluation=ev.id)
    guidance = paper.sweep_result(wc)
    assert guidance == f"results/sweeps/{ev.sweep}/guidance.json"
    args = paper.sample_args(wc, W(guidance=guidance))
    assert args[:2] == ["--guidance-scale-from", guidance]
    assert args[args.index("--chunk-size") + 1] == paper.config["sampling"]["chunk_size"]
    assert args[args.index("--num-per-class") + 1] == ev.metrics["num_per_class"]
    assert args[args.index("--check-extractor") + 1] == ev.metrics["extractor"]
    plain = next(e for e in paper.study.evaluations.values() if not e.sweep and e.kind == "model")
    args = paper.sample_args(W(evaluation=plain.id), W(guidance=[]))
    assert args[:2] == ["--guidance-scale", plain.sampling["guidance_scale"]]
    assert ("--guidance-power" in args) == ("guidance_power" in plain.sampling)


def test_sweep_arguments_list_every_scale(paper):
    sweep = next(iter(paper.study.sweeps.values()))
    args = paper.sweep_args(W(sweep=sweep.id))
    assert args[: 1 + len(sweep.scales)] == ["--scales", *sweep.scales]
    assert args[args.index("--extractor") + 1] == sweep.metrics["extractor"]
    assert paper.sweep_checkpoint(W(sweep=sweep.id)) == paper.study.checkpoint(sweep.run)


def test_checkpoints_of_an_evaluation(paper):
    config = copy.deepcopy(paper.config)
    config["tables"]["table2"]["evaluate_epochs"] = [100, 300]
    wiring = RuleWiring(load_study(config))
    study = wiring.study
    curve = next(e for e in study.evaluations.values() if not e.final and e.kind == "model")
    wc = W(evaluation=curve.id)
    assert wiring.sample_checkpoint(wc) == study.checkpoint(curve.run, curve.epoch)
    assert wiring.trained_checkpoint(wc) == study.checkpoint(curve.run)  # exists once it ends
    official = next(e for e in study.evaluations.values() if e.checkpoint)
    assert paper.sample_checkpoint(W(evaluation=official.id)) == official.checkpoint


def test_evaluation_inputs_of_real_images_samples_and_heldout_tokens(demo):
    study = demo.study
    table = next(iter(study.tables))
    floor, tokens, _ = study.references[table]
    assert demo.evaluation_input(W(evaluation=floor.evaluation)) == demo.image_marker()
    assert demo.evaluation_samples(W(evaluation=floor.evaluation)) == "results/demo/images/test"
    assert demo.evaluation_heldout(W(evaluation=floor.evaluation)) == []  # no run
    assert demo.reconstruction_images(W(evaluation=tokens.evaluation)) == (
        "results/demo/images/test"
    )
    row = study.tables[table][0]
    wc = W(evaluation=row.evaluation)
    assert demo.evaluation_input(wc) == f"results/demo/evals/{row.evaluation}/samples.npz"
    heldout = demo.evaluation_heldout(wc)
    assert heldout.endswith("/val/manifest.json")
    args = demo.evaluate_args(wc, W(heldout=heldout))
    assert args[:2] == ["--heldout", str(Path(heldout).parent)]
    assert args[-2:] == ["--probe-images", "results/demo/images/train"]  # class_probe: true
    assert demo.probe_input() == demo.image_marker()
    # the demo's reference is its held-out images; the paper's is the ADM batch
    assert demo.reference_input(wc) == demo.image_marker()
    assert demo.reference_param(wc, W(reference=[])) == "results/demo/images/val"


def test_the_paper_scores_against_the_adm_batch(paper):
    reference = paper.config["evaluation"]["reference"]
    wc = W(evaluation=paper.study.tables["table4"][0].evaluation)
    assert paper.reference_input(wc) == reference
    assert paper.reference_param(wc, W(reference=reference)) == reference
    assert paper.extractor_flags("--weights") == (
        ["--weights", paper.config["evaluation"]["weights"]]
        if paper.config["evaluation"]["weights"]
        else []
    )


def test_launcher_arguments_name_the_stages_resources(paper):
    assert shlex.split(paper.launcher_args("train")) == ["--launcher", paper.config["launcher"]]
    config = copy.deepcopy(paper.config)
    config["launcher_dir"] = "profiles/my site"
    wiring = RuleWiring(load_study(config))
    assert shlex.split(wiring.launcher_args("sample"))[-2:] == [
        "--launcher-config",
        "profiles/my site/sample.yaml",
    ]


def test_report_inputs_come_from_the_study(paper):
    study = paper.study
    wc = W(table="table2")
    assert paper.table_metrics(wc) == study.metrics_files("table2")
    assert paper.table_rows(wc) == study.report_rows("table2")
    assert len(paper.table_sweeps(wc)) == len(study.sweep_points("table2")) == 15
    assert paper.table_checkpoints(wc) == [study.checkpoint(r) for r in study.table_runs("table2")]
    assert paper.table_grids(wc) == [g["png"] for g in paper.table_grid_labels(wc)]
    assert paper.table_plot_kind(wc) == {"plot": "heatmap"}
    assert paper.table_training_logs(wc) == study.training_logs("table2")
    assert paper.table_sweep_points(wc) == study.sweep_points("table2")
    points = paper.curve_points(wc)
    assert paper.curve_metrics(wc) == [p["metrics"] for p in points]
    bench = paper.config["throughput_table"]
    assert len(paper.throughput_benchmarks()) == len(bench["models"]) * len(bench["dtypes"])
    assert paper.all_outputs() == study.outputs()
    assert json.loads(paper.study_json()) == paper.config


def test_a_study_without_table5_benchmarks_nothing(paper):
    config = copy.deepcopy(paper.config)
    config.pop("throughput_table")
    assert RuleWiring(load_study(config)).throughput_benchmarks() == []


def test_one_of_matches_exactly_the_names():
    import re

    pattern = one_of(["table2", "a.b"])
    assert re.fullmatch(pattern, "a.b") and not re.fullmatch(pattern, "axb")
    assert re.fullmatch(one_of([]), "") is None  # no names: matches nothing


def test_the_demo_tokenizer_is_trained_as_its_config_says(demo, monkeypatch):
    """tokenizer.train reaches `rar train-tokenizer` whole (each key a TokenizerTraining field
    or --downsample), and the schema's defaults are TokenizerTraining's."""
    import dataclasses

    import rar.demo.vq
    from rar.cli import main
    from rar.experiments import SCHEMA
    from rar.settings.stages import TokenizerTraining

    train = demo.config["tokenizer"]["train"]
    calls = []
    monkeypatch.setattr(rar.demo.vq, "train_tokenizer_from_folder", lambda *a, **k: calls.append(k))
    argv = ["train-tokenizer", "--images", "i", "--out", "o.pt", *map(str, demo.tokenizer_args())]
    assert main(argv) == 0
    training, config = calls[0]["training"], calls[0]["config"]
    assert config.downsample == train["downsample"]
    assert {k: v for k, v in train.items() if k != "downsample"} == {
        k: getattr(training, k) for k in train if k != "downsample"
    }
    schema = yaml.safe_load(SCHEMA.read_text())["properties"]["tokenizer"]["properties"]["train"][
        "properties"
    ]
    for field in dataclasses.fields(TokenizerTraining):
        assert schema[field.name]["default"] == field.default, field.name


def _with_table(base: dict, rows: list[dict] | None = None) -> RuleWiring:
    """The paper's study with one more table, `other`: RAR-B rows on `base`."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    rows = rows or [{"anneal_start": 0, "anneal_end": 0}]
    config["tables"] = {
        "table4": config["tables"]["table4"],
        "other": {"base": {"model": "rar_b", **base}, "rows": rows},
    }
    return RuleWiring(load_study(config))


def test_a_tables_tokenizer_reaches_its_data_runs_samples_and_reconstructions():
    """A table's `tokenizer:` is its data set's, its runs' codebook and tokens, its samples'
    and sweeps' decoder and its reconstructions'; the study's tables keep theirs."""
    vq = {"name": "llamagen_vq16", "weights": "resources/vq_ds16_c2i.pt", "codebook_size": 16384}
    sampling = {"guidance_scales": [2.0, 4.0], "temperature": 1.0}
    wiring = _with_table({"tokenizer": vq, "sampling": sampling})
    study, default = wiring.study, wiring.config["tokenizer"]
    row, paper_row = study.tables["other"][0], study.tables["table4"][0]
    dataset = study.dataset_of(row.run)
    assert dataset == "imagenet-llamagen_vq16-tencrop"  # the study's own keep their names
    assert study.dataset_of(paper_row.run) == "imagenet-maskgit_vqgan-tencrop"
    cfg = study.runs[row.run].config
    assert (cfg.codebook_size, cfg.num_tokens) == (16384, 256)
    assert study.runs[paper_row.run].config.codebook_size == 1024
    ev = study.evaluations[row.evaluation]
    for wc in (W(dataset=dataset), W(evaluation=row.evaluation), W(sweep=ev.sweep)):
        assert wiring.tokenizer_input(wc) == vq["weights"]
        assert wiring.tokenizer_grid(wc) == 16
    assert wiring.tokenizer_input(W(evaluation=paper_row.evaluation)) == default["weights"]
    official = study.tables["official"][0].evaluation  # a released checkpoint: the study's
    assert wiring.tokenizer_input(W(evaluation=official)) == default["weights"]


def test_a_tables_grid_and_reference_make_their_own_data_and_evaluations():
    """ImageNet-512: the study's tokenizer at grid 32 (1,024 tokens), its data sets named by
    the grid, its rows and sweeps scored against the table's reference batch."""
    ref = "resources/VIRTUAL_imagenet512.npz"
    sampling = {"guidance_scales": [2.0, 4.0], "temperature": 1.0}
    base = {"tokenizer": {"grid": 32}, "evaluation": {"reference": ref}, "sampling": sampling}
    wiring = _with_table(base)
    study = wiring.study
    row = study.tables["other"][0]
    dataset = study.dataset_of(row.run)
    assert dataset == "imagenet-maskgit_vqgan-32x32-tencrop"
    assert study.runs[row.run].config.num_tokens == 1024
    assert wiring.tokenizer_grid(W(dataset=dataset)) == 32
    assert wiring.tokenizer_input(W(dataset=dataset)) == wiring.config["tokenizer"]["weights"]
    sweep = study.evaluations[row.evaluation].sweep
    for wc in (W(evaluation=row.evaluation), W(sweep=sweep)):
        assert wiring.reference_input(wc) == ref
        assert wiring.reference_param(wc, W(reference=ref)) == ref
    paper_row = W(evaluation=study.tables["table4"][0].evaluation)
    assert wiring.reference_input(paper_row) == wiring.config["evaluation"]["reference"]


def test_reference_rows_reconstruct_through_the_tables_tokenizer():
    config = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    name = next(iter(config["tables"]))
    config["tables"] = {name: config["tables"][name]}
    other = copy.deepcopy(config["tables"][name])
    other["base"] = {**other.get("base", {}), "tokenizer": {"grid": 4}}
    config["tables"]["other"] = other
    config["tokenizer"].pop("train")
    config["tokenizer"]["weights"] = "resources/tok.pt"
    wiring = RuleWiring(load_study(config))
    study = wiring.study
    tokens = {t: rows[1].evaluation for t, rows in study.references.items()}
    assert tokens[name] != tokens["other"]
    assert wiring.tokenizer_grid(W(evaluation=tokens["other"])) == 4
    assert wiring.tokenizer_grid(W(evaluation=tokens[name])) == config["tokenizer"]["grid"]


def test_a_tables_chunk_size_reaches_its_samples_and_sweeps_not_its_ids():
    """`sampling: {chunk_size: N}` in a table's base (or a row) is the `--chunk-size` of its
    sample and sweep jobs, the row's over the base's; the study's tables keep the study's, and
    the ids are those of the same table without it (the chunk size is in the sampler's plan,
    not in an id)."""
    sampling = {"guidance_scales": [2.0, 4.0], "temperature": 1.0}
    rows = [
        {"anneal_start": 0, "anneal_end": 0},
        {"anneal_start": 0, "anneal_end": 10, "sampling": {"chunk_size": 7}},
    ]
    plain = _with_table({"sampling": sampling}, rows).study
    wiring = _with_table({"sampling": {**sampling, "chunk_size": 40}}, rows)
    study = wiring.study
    assert sorted(study.evaluations) == sorted(plain.evaluations)
    assert sorted(study.sweeps) == sorted(plain.sweeps)

    def chunk(args: list) -> int:
        return args[args.index("--chunk-size") + 1]

    for row, want in zip(study.tables["other"], (40, 7), strict=True):
        ev = study.evaluations[row.evaluation]
        assert chunk(wiring.sample_args(W(evaluation=ev.id), W(guidance="g.json"))) == want
        assert chunk(wiring.sweep_args(W(sweep=ev.sweep))) == want
    paper_row = study.evaluations[study.tables["table4"][0].evaluation]
    args = wiring.sample_args(W(evaluation=paper_row.id), W(guidance="g.json"))
    assert chunk(args) == wiring.config["sampling"]["chunk_size"] == 250
