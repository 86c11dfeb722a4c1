"""Studies: tables -> runs (deduplicated by id), evaluations, the trunk plan, config errors."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rar.experiments import StudyError, estimate, format_plan, load_study, run_id

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


def test_shared_rows_are_one_run(paper):
    study = load_study(paper)
    t2 = next(
        r for r in study.tables["table2"] if r.keys == {"anneal_start": 200, "anneal_end": 300}
    )
    t3 = next(r for r in study.tables["table3"] if r.keys["target_order"] == "row-major")
    t4 = next(r for r in study.tables["table4"] if r.keys["model"] == "rar_l")
    assert t2.run == t3.run == t4.run


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


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"target_order": "hilbert"}, r"table table2, row 1: unknown scan order 'hilbert'"),
        (
            {"anneal_start": 300, "anneal_end": 200},
            r"table2, row 1.*anneal_start 300.0 > anneal_end",
        ),
        ({"anneal_end": 500}, r"table2, row 1.*anneal_end 500.0 > epochs 400.0"),
        ({"model": "rar_q"}, r"table2, row 1: unknown model size 'rar_q'"),
        ({"epochz": 3}, r"table2, row 1: unknown key\(s\) epochz"),
        ({"global_batch": "big"}, r"table2, row 1: key 'global_batch' must be int"),
    ],
)
def test_bad_rows_name_table_row_and_key(paper, row, message):
    c = copy.deepcopy(paper)
    c["tables"] = {"table2": {"rows": [row]}}
    with pytest.raises(StudyError, match=message):
        load_study(c)


def test_official_checkpoints_are_scored_without_training(paper):
    study = load_study(paper)
    rows = study.tables["official"]
    assert [r.label for r in rows] == ["rar_b", "rar_l", "rar_xl", "rar_xxl"]
    ev = study.evaluations[rows[0].evaluation]
    assert ev.checkpoint == "resources/rar_b.bin" and ev.sampling["guidance_scale"] == 16.0
    assert rows[0].paper == {"fid": 1.95}
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
