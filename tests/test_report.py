"""`rar report`: metrics.json -> table rows/columns, missing and failed rows, plots as PNGs.

Every input is written by hand in tmp_path, shaped like what rar/evaluation/scorer.py
(metrics.json), rar/training/loop.py (metrics.csv) and rar/sampling/sampler.py (grid.png,
samples.json) write. One file for the rar/report/ package, a section per module: the fakes are
shared by all of them, and tests/ is not a package that could share them otherwise.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rar import report
from rar.experiments import CEILING, FLOOR, RECONSTRUCTED
from rar.experiments.records import METRICS_FIELDS
from rar.experiments.results import GUIDANCE_FORMAT as SWEEP_FORMAT
from rar.report import (
    anneal_grid,
    make_table,
    make_table_or_partial,
    plot_anneal_heatmap,
    plot_fid_vs_epoch,
    plot_guidance_sweeps,
    plot_loss_curves,
    plot_metric_bars,
    plot_sample_grids,
    plot_scan_orders,
    read_failure,
    read_metrics,
)
from rar.report.figures import (
    check_metric,
    panel_metrics,
    reference_note,
    short_status,
)
from rar.report.grids import _grid_image
from rar.report.read import guidance_cells, row_status
from rar.report.tables import assemble_table
from rar.sampling.sweep import summarize

# ##########################################################################################
# Fake inputs
# ##########################################################################################


def write_metrics(
    path: Path,
    *,
    fid: float,
    isc: float = 250.0,
    precision: float | None = 0.8,
    recall: float | None = 0.6,
    extractor: str = "inception-v3-compat",
    num_samples: int = 50_000,
) -> Path:
    """A metrics.json as rar.evaluation.scorer.evaluate() writes it (the fields the report
    reads)."""
    s = "" if extractor == "inception-v3-compat" else "_" + extractor.replace("-", "_")
    reasons = []
    if s:
        reasons.append(f"features from {extractor}, not Inception-V3 (inception-v3-compat)")
    if num_samples != 50_000:
        reasons.append(f"{num_samples} samples; the paper uses 50000")
    record = {
        "format": "rar-metrics/2",
        f"fid{s}": fid,
        f"isc{s}_mean": isc,
        f"isc{s}_std": 3.25,
        f"precision{s}": precision,
        f"recall{s}": recall,
        "comparable_to_paper": dict.fromkeys(("fid", "is", "precision", "recall"), not reasons),
        "not_comparable_because": reasons,
        "num_samples": num_samples,
        "extractor": extractor,
        "sampling": {"preset": "rar_l"},
        "checkpoint_info": {"epoch": 400},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def row(label: str, keys: dict, paper: dict | None = None, failure=None) -> dict:
    return {
        "label": label,
        "keys": keys,
        "run": f"run_{label}",
        "evaluation": f"eval_{label}",
        "paper": paper or {},
        "failure": failure,
    }


def write_scored(path: Path, fid: float, half: float, **extra) -> Path:
    """A metrics.json with a FID interval of fid +- half (and any extra keys)."""
    write_metrics(path, fid=fid, extractor="efficientnet-lite0", num_samples=160)
    record = json.loads(path.read_text())
    record.update(fid_ci_low=fid - half, fid_ci_high=fid + half, **extra)
    path.write_text(json.dumps(record))
    return path


def write_train_log(path: Path, epochs: int = 40) -> Path:
    """A metrics.csv as rar.training.loop writes it (METRICS_FIELDS), with a torn last line."""
    lines = [",".join(METRICS_FIELDS)]
    for i in range(epochs * 5):
        ep = i / 5
        r = min(1.0, max(0.0, 1 - (ep - 10) / 20))
        lines.append(f"{i},{ep},{7 - np.log1p(ep):.4f},0.1,1e-4,{r},1.0,1e5,400,{i}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n12,3.")
    return path


def assert_png(path: Path, min_side: int = 200) -> None:
    assert path.exists()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert min(im.size) >= min_side, im.size
        # Not a blank page: a plot has more than a handful of distinct colours.
        assert len(np.unique(np.asarray(im.convert("L")))) > 10


def table2_csv(tmp_path: Path, missing=((100, 100),)) -> Path:
    """A small Table 2: (start, end) for start <= end in {0, 100, 200}, some rows missing."""
    rows, paths = [], []
    for s in (0, 100, 200):
        for e in (0, 100, 200):
            if s > e:
                continue
            r = row(f"{s}-{e}", {"anneal_start": s, "anneal_end": e})
            p = tmp_path / "evals" / r["evaluation"] / "metrics.json"
            if (s, e) not in missing:
                write_metrics(p, fid=2.0 + s / 100 + e / 1000)
            if (s, e) == (200, 200):
                r["paper"] = {"fid": 2.1}
            rows.append(r)
            paths.append(p)
    csv = tmp_path / "table2.csv"
    make_table(table="table2", rows=rows, metrics=paths, csv=csv)
    return csv


def anneal_table(tmp_path: Path, fids: dict, nll: dict | None = None, half: float = 2.0):
    """A Table 2 over (start, end) in {0..4} from `fids` {(s, e): fid}, with val NLL files
    ({(s, e): (value, se)}), and the two reference rows; returns (df, markdown text)."""
    rows, paths = [], []
    for (s, e), fid in fids.items():
        r = row(f"{s}-{e}", {"anneal_start": s, "anneal_end": e})
        p = write_scored(tmp_path / "evals" / r["evaluation"] / "metrics.json", fid, half)
        if nll and (s, e) in nll:
            value, se = nll[(s, e)]
            r["val_nll"] = tmp_path / f"nll-{s}-{e}.json"
            r["val_nll"].write_text(json.dumps({"val_nll": value, "val_nll_se": se}))
        rows.append(r)
        paths.append(p)
    refs = ((FLOOR, 20.0), (RECONSTRUCTED, 40.0), (CEILING, 220.0))
    for label, fid in refs:
        r = {**row(label, {}), "kind": "reference", "run": None}
        rows.append(r)
        paths.append(write_scored(tmp_path / "refs" / label / "metrics.json", fid, 1.0))
    md = tmp_path / "t2.md"
    df = make_table(
        table="table2",
        rows=rows,
        metrics=paths,
        csv=tmp_path / "t2.csv",
        md=md,
        html=tmp_path / "t2.html",
    )
    return df, md.read_text()


GRID = {(0, 0): 80.0, (0, 2): 70.0, (2, 3): 60.0, (3, 4): 61.0, (4, 4): 75.0}


# ##########################################################################################
# rar.report.read: metrics.json, held-out NLL, training logs, guidance sweeps, status
# ##########################################################################################


def test_extractor_suffixes_come_from_the_registry():
    from rar.settings.presets import EXTRACTORS

    for name, spec in EXTRACTORS.items():
        assert report.extractor_suffix(name) == spec.suffix
        assert report.EXTRACTOR_SUFFIXES[name] == spec.suffix


def test_train_log_drops_torn_line_and_resumed_duplicates(tmp_path):
    path = write_train_log(tmp_path / "m.csv", epochs=2)  # 10 rows and a torn "12,3."
    assert report.read_train_log(path)["step"].tolist() == list(range(10))
    with path.open("a") as f:  # the torn line, now inside; a resume logs step 7 again
        f.write("\n7,1.4,0.5,0.1,1e-4,1.0,1.0,1e5,400,99\n")
    df = report.read_train_log(path)
    assert df["step"].tolist() == list(range(10))
    assert df.set_index("step").loc[7, "loss"] == 0.5  # the last record of a step wins
    assert report.read_train_log(tmp_path / "absent.csv") is None
    (tmp_path / "header.csv").write_text("step,epoch,loss\n")
    assert report.read_train_log(tmp_path / "header.csv") is None


def test_val_nll_comes_from_a_json_or_the_runs_validation_log(tmp_path):
    (tmp_path / "v.json").write_text(
        json.dumps({"val_nll": 3.5, "val_nll_ci_low": 3.4, "val_nll_ci_high": 3.6})
    )
    assert report.read_val_nll(tmp_path / "v.json") == {
        "val_nll": 3.5,
        "val_nll_ci_low": 3.4,
        "val_nll_ci_high": 3.6,
    }
    log = tmp_path / "validation.csv"
    log.write_text(
        "step,epoch,val_loss,val_nll,order\n10,1.0,4.2,4.1,raster\n20,2.0,4.0,3.9,raster\n"
    )
    assert report.read_val_nll(log)["val_nll"] == 3.9
    assert report.read_val_nll(tmp_path / "absent.json") is None
    assert report.read_val_nll(None) is None


def test_read_failure_takes_the_first_line_of_the_first_file(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    b.write_text("\n  out of memory \nlog: x\n")
    assert read_failure([a, b]) == "out of memory"
    assert read_failure(str(b)) == "out of memory"
    a.write_text("\n")
    assert read_failure([a, b]) == "no reason recorded"
    assert read_failure(None) is None and read_failure([tmp_path / "c"]) is None


def test_guidance_cells_mark_the_chosen_scale_and_an_edge(tmp_path):
    sweep = tmp_path / "guidance.json"
    points = [{"guidance_scale": 2.0, "fid": 3.1}, {"guidance_scale": 4.0, "fid": 2.51}]
    record = {"format": SWEEP_FORMAT, "guidance_scale": 4.0, "best": 2.51, "points": points}
    sweep.write_text(json.dumps({**record, "at_edge": False}))
    assert guidance_cells(None, sweep) == {
        "guidance_scale": 4.0,
        "guidance_sweep": "2: 3.10, 4: 2.51*",
    }
    sweep.write_text(json.dumps({**record, "at_edge": True}))
    cells = guidance_cells({"guidance_scale": 3.0}, sweep)
    # the scale the evaluation recorded wins over the sweep's choice
    assert cells == {"guidance_scale": 3.0, "guidance_sweep": "2: 3.10, 4: 2.51!"}
    assert guidance_cells({"guidance_scale": 1.5}, None)["guidance_sweep"] is None
    # three significant digits: a demo's FIDs in the thousands print no decimals
    points = [{"guidance_scale": 2.0, "fid": 1294.37}, {"guidance_scale": 4.0, "fid": 25.13}]
    sweep.write_text(json.dumps({**record, "points": points, "at_edge": False}))
    assert guidance_cells(None, sweep)["guidance_sweep"] == "2: 1294, 4: 25.1*"
    assert guidance_cells(None, tmp_path / "absent.json") == {
        "guidance_scale": None,
        "guidance_sweep": None,
    }


def test_row_status_says_why_numbers_are_not_the_papers():
    m = {"comparable": False, "extractor": "efficientnet-lite0", "n_samples": 5_000}
    assert row_status(m, "an old failure") == (
        "ok (efficientnet-lite0, 5,000 samples: not comparable to the paper)"
    )
    inception = {**m, "extractor": "inception-v3-compat", "n_samples": None}
    assert row_status(inception, None) == "ok (not comparable to the paper)"
    assert row_status({**m, "comparable": True}, None) == "ok"
    assert row_status(None, "out of memory") == "failed: out of memory"
    assert row_status(None, None) == "missing"


def test_comparability_is_read_per_metric(tmp_path):
    """rar-metrics/2: a row is comparable when every metric it computed is; precision and
    recall not computed (null) do not count against it. A rar-metrics/1 record (torch-fidelity's
    IS and precision/recall) is comparable by its FID only, and says why."""
    path = write_metrics(tmp_path / "m.json", fid=2.0)
    record = json.loads(path.read_text())
    m = read_metrics(path)
    assert m["comparable"] and m["comparable_metrics"]["is"] is True
    per_metric = {"fid": True, "is": False, "precision": None, "recall": None}
    path.write_text(json.dumps({**record, "comparable_to_paper": per_metric}))
    assert read_metrics(path)["comparable_metrics"] == per_metric
    assert not read_metrics(path)["comparable"]
    path.write_text(json.dumps({**record, "comparable_to_paper": {**per_metric, "is": True}}))
    assert read_metrics(path)["comparable"]
    legacy = {**record, "format": "rar-metrics/1", "comparable_to_paper": True}
    path.write_text(json.dumps(legacy))
    m = read_metrics(path)
    assert m["comparable_metrics"] == {
        "fid": True,
        "is": False,
        "precision": False,
        "recall": False,
    }
    assert not m["comparable"] and "rar-metrics/1" in m["reasons"][-1]
    assert row_status(m, None) == "ok (not comparable to the paper)"


# ##########################################################################################
# rar.report.tables and .markdown: rows, columns, holes, the Markdown page, Table 5
# ##########################################################################################


def test_table_values_diffs_and_column_order(tmp_path):
    m1 = write_metrics(tmp_path / "a" / "metrics.json", fid=1.73, isc=300.25)
    m2 = write_metrics(tmp_path / "b" / "metrics.json", fid=2.5, precision=None, recall=None)
    rows = [
        row("a", {"anneal_start": 200, "anneal_end": 300}, paper={"fid": 1.70, "is": 299.5}),
        row("b", {"anneal_start": 0, "anneal_end": 0}),
    ]
    df = make_table(table="table2", rows=rows, metrics=[m1, m2], csv=tmp_path / "t.csv")

    assert list(df.columns[:5]) == [
        "anneal_start",
        "anneal_end",
        "fid",
        "fid_ci_low",
        "fid_ci_high",
    ]
    results, paper = report.RESULT_COLUMNS, report.PAPER_COLUMNS
    assert list(df.columns) == [
        "anneal_start",
        "anneal_end",
        *results,
        *paper,
        "kind",
        "run",
        "evaluation",
        "label",
    ]
    assert df["kind"].tolist() == ["row", "row"]
    a, b = df.iloc[0], df.iloc[1]
    assert a["fid"] == 1.73 and a["is"] == 300.25 and a["is_std"] == 3.25
    assert a["fid_diff"] == pytest.approx(0.03) and a["is_diff"] == pytest.approx(0.75)
    assert a["paper_fid"] == 1.70 and np.isnan(a["paper_precision"]) and np.isnan(a["recall_diff"])
    assert a["n_samples"] == 50_000 and a["comparable"] and a["status"] == "ok"
    assert a["run"] == "run_a" and a["evaluation"] == "eval_a"
    assert np.isnan(b["precision"]) and np.isnan(b["fid_diff"])  # no reference images

    # The CSV round-trips: same rows, integer sample counts, blanks for unknowns.
    back = pd.read_csv(tmp_path / "t.csv")
    assert list(back.columns) == list(df.columns)
    assert back["n_samples"].tolist() == [50_000, 50_000]
    assert "50000.0" not in (tmp_path / "t.csv").read_text()


def test_missing_and_failed_rows_are_kept_and_marked(tmp_path):
    ok = write_metrics(tmp_path / "ok" / "metrics.json", fid=2.0)
    failure = tmp_path / "bad" / "failure.txt"
    failure.parent.mkdir()
    failure.write_text("NaN loss at step 1234\n")
    rows = [
        row("ok", {"model": "rar_b"}),
        row("gone", {"model": "rar_l"}),
        row("bad", {"model": "rar_xl"}, paper={"fid": 1.50}, failure=failure),
        # A failure file left by an earlier attempt does not override a finished evaluation.
        row("retried", {"model": "rar_xxl"}, failure=failure),
    ]
    paths = [ok, tmp_path / "gone" / "metrics.json", tmp_path / "bad" / "metrics.json", ok]
    md = tmp_path / "t.md"
    df = make_table(table="table4", rows=rows, metrics=paths, csv=tmp_path / "t.csv", md=md)

    assert len(df) == 4
    assert df["status"].tolist() == ["ok", "missing", "failed: NaN loss at step 1234", "ok"]
    assert df["model"].tolist() == ["rar_b", "rar_l", "rar_xl", "rar_xxl"]
    assert df.loc[2, "paper_fid"] == 1.50 and np.isnan(df.loc[2, "fid_diff"])
    assert pd.isna(df.loc[1, "n_samples"]) and pd.isna(df.loc[1, "comparable"])
    text = md.read_text()
    for model in ("rar_b", "rar_l", "rar_xl", "rar_xxl"):
        assert f"| {model} |" in text
    assert "failed: NaN loss at step 1234" in text
    assert "No metrics for 2 of 4 rows" in text


def test_a_status_every_row_shares_is_said_once(tmp_path):
    """The demo's rows all read `ok (efficientnet-lite0, 160 samples: not comparable to the
    paper)`: the caption says so once, and no header or row repeats it; where a row differs,
    a status column shows it, the rest reading `ok`. The CSV keeps every row's status."""
    rows, paths = [], []
    for k in range(6):
        rows.append(row(f"r{k}", {"anneal_start": k, "anneal_end": k}))
        paths.append(write_scored(tmp_path / f"m{k}.json", 60.0 + k, 70.0))
    csv, md = tmp_path / "t.csv", tmp_path / "t.md"
    df = make_table(table="table2", rows=rows, metrics=paths, csv=csv, md=md)
    shared = "ok (efficientnet-lite0, 160 samples: not comparable to the paper)"
    assert df["status"].eq(shared).all() and pd.read_csv(csv)["status"].eq(shared).all()
    text = md.read_text()
    table = [ln for ln in text.splitlines() if ln.startswith("|")]
    caption = text[: text.index(table[0])]
    assert "160 samples per evaluation" in caption and "efficientnet-lite0" in caption
    assert "160 samples; the paper uses 50000 (all 6 rows with metrics)" in caption
    assert (
        table[0]
        == "| anneal_start | anneal_end | FID↓ [95% interval] | IS↑ | precision↑ | recall↑ |"
    )
    assert not any("efficientnet" in ln or "160" in ln or "ok" in ln for ln in table)
    assert "the RAR paper's value" not in caption  # no paper column to explain

    # One row missing, one scored on 5,000 samples: those two say how they differ.
    paths[4] = tmp_path / "gone.json"
    paths[5] = write_metrics(
        tmp_path / "m5.json", fid=61.0, extractor="efficientnet-lite0", num_samples=5_000
    )
    make_table(table="table2", rows=rows, metrics=paths, csv=csv, md=md)
    table = [ln for ln in md.read_text().splitlines() if ln.startswith("|")]
    assert table[0].endswith("| samples | status |")
    status = [ln.rstrip(" |").rsplit("| ", 1)[1] for ln in table[2:]]
    assert status == [
        "ok",
        "ok",
        "ok",
        "ok",
        "missing",
        "ok (efficientnet-lite0, 5,000 samples: not comparable to the paper)",
    ]
    assert md.read_text().count(shared) == 0
    # In the middle of a grid, most rows missing: the rows with metrics still read `ok`.
    paths[1:5] = [tmp_path / "gone.json"] * 4
    make_table(table="table2", rows=rows, metrics=paths, csv=csv, md=md)
    table = [ln for ln in md.read_text().splitlines() if ln.startswith("|")]
    status = [ln.rstrip(" |").rsplit("| ", 1)[1] for ln in table[2:]]
    assert status[:5] == ["ok", "missing", "missing", "missing", "missing"]


def test_failure_paths_may_be_several(tmp_path):
    run_failure = tmp_path / "run" / "failure.txt"
    run_failure.parent.mkdir()
    run_failure.write_text("out of memory\n")
    rows = [row("x", {"model": "rar_b"}, failure=[tmp_path / "eval_failure.txt", run_failure])]
    df = make_table(table="t", rows=rows, metrics=[tmp_path / "none.json"], csv=tmp_path / "t.csv")
    assert df.loc[0, "status"] == "failed: out of memory"


def test_efficientnet_metrics_map_to_the_same_columns_and_say_so(tmp_path):
    m = write_metrics(
        tmp_path / "m.json",
        fid=41.5,
        isc=7.25,
        extractor="efficientnet-lite0",
        num_samples=5_000,
    )
    rec = read_metrics(m)
    assert rec["fid"] == 41.5 and rec["is"] == 7.25 and rec["extractor"] == "efficientnet-lite0"
    md = tmp_path / "t.md"
    df = make_table(
        table="demo",
        rows=[row("r", {"model": "rar_tiny"}, paper={"fid": 1.5})],
        metrics=[m],
        csv=tmp_path / "t.csv",
        md=md,
    )
    assert df.loc[0, "fid"] == 41.5 and df.loc[0, "extractor"] == "efficientnet-lite0"
    assert not df.loc[0, "comparable"]
    assert df.loc[0, "status"] == (
        "ok (efficientnet-lite0, 5,000 samples: not comparable to the paper)"
    )
    text = md.read_text()
    assert "NOT INCEPTION FIDs" in text
    # Said once, by the caption: not in each metric's header, not in a status per row.
    assert "| FID↓ | paper FID | ΔFID | IS↑ | precision↑ | recall↑ |" in text
    assert "5,000 samples per evaluation" in text
    assert "5000 samples; the paper uses 50000" in text  # the reason from metrics.json
    assert "the RAR paper's value where known" in text  # its paper column explained


def test_comparability_note_for_a_small_inception_run(tmp_path):
    m = write_metrics(tmp_path / "m.json", fid=3.0, num_samples=5_000)
    df = make_table(
        table="t", rows=[row("r", {"model": "rar_b"})], metrics=[m], csv=tmp_path / "t.csv"
    )
    assert df.loc[0, "status"] == "ok (5,000 samples: not comparable to the paper)"


def test_markdown_formats_numbers(tmp_path):
    m = write_metrics(tmp_path / "m.json", fid=1.734, isc=300.26, precision=0.805, recall=0.6)
    md = tmp_path / "t.md"
    make_table(
        table="table3",
        rows=[row("r", {"target_order": "z-curve"}, paper={"fid": 1.70})],
        metrics=[m],
        csv=tmp_path / "t.csv",
        md=md,
    )
    text = md.read_text()
    assert text.startswith("# table3\n")
    line = next(ln for ln in text.splitlines() if ln.startswith("| z-curve"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:5] == ["z-curve", "1.73", "1.70", "+0.03", "300.3"]
    assert cells[-2:] == ["0.81", "0.60"]  # one row: no samples or status column to vary
    assert "50,000 samples per evaluation" in text


def test_bad_inputs_are_named(tmp_path):
    m = write_metrics(tmp_path / "m.json", fid=3.0)
    with pytest.raises(ValueError, match="unknown paper metrics"):
        make_table(
            table="t",
            rows=[row("r", {"model": "rar_b"}, paper={"FID": 1.0})],
            metrics=[m],
            csv=tmp_path / "t.csv",
        )
    with pytest.raises(ValueError, match="clash"):
        make_table(table="t", rows=[row("r", {"fid": 1})], metrics=[m], csv=tmp_path / "t.csv")
    with pytest.raises(ValueError, match="2 rows but 1"):
        make_table(table="t", rows=[row("a", {}), row("b", {})], metrics=[m], csv=tmp_path / "x")


def test_assembling_a_table_writes_nothing(tmp_path):
    m = write_metrics(tmp_path / "m.json", fid=2.0)
    t = assemble_table(table="t", rows=[row("r", {"model": "rar_b"})], metrics=[m])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
    assert t.n_ok() == 1 and t.markdown().startswith("# t\n")


def test_rar_reports_table_stays_partial_until_complete(tmp_path, capsys):
    """`rar report`'s table: with a hole, <table>.partial.* and the finished table left
    alone; complete, the table itself (the bytes make_table writes), the partial files gone,
    and one printed line naming the file written (it once also printed a line naming the
    .partial.csv that a complete table had just been renamed from)."""
    out = tmp_path / "results"
    out.mkdir()
    (out / "table4.csv").write_text("finished\n")
    rows = [row("a", {"model": "rar_b"}), row("b", {"model": "rar_l"})]
    paths = [write_metrics(tmp_path / "a.json", fid=2.0), tmp_path / "b.json"]
    df = make_table_or_partial(table="table4", rows=rows, metrics=paths, folder=out)
    assert df["status"].tolist() == ["ok", "missing"]
    assert (out / "table4.csv").read_text() == "finished\n"
    partial = ["table4.partial.csv", "table4.partial.html", "table4.partial.md"]
    assert sorted(p.name for p in out.iterdir()) == ["table4.csv", *partial]
    assert capsys.readouterr().out.splitlines() == [
        f"table4: 1 of 2 rows without metrics: written to {out / 'table4.partial.csv'} "
        f"(and .md, .html); {out / 'table4.csv'} is left as it was"
    ]

    write_metrics(paths[1], fid=3.0)
    make_table_or_partial(table="table4", rows=rows, metrics=paths, folder=out)
    assert capsys.readouterr().out.splitlines() == [
        f"table4: complete -> {out / 'table4.csv'} (and .md, .html)"
    ]
    assert sorted(p.name for p in out.iterdir()) == ["table4.csv", "table4.html", "table4.md"]
    ref = {ext: tmp_path / "ref" / f"t.{ext}" for ext in ("csv", "md", "html")}
    make_table(table="table4", rows=rows, metrics=paths, **ref)
    for ext, path in ref.items():
        assert (out / f"table4.{ext}").read_bytes() == path.read_bytes()


def test_throughput_table_puts_the_paper_beside_fp32_rows(tmp_path):
    """The paper's figures beside fp32 and tf32 rows; tf32 (the official sampler's fp32
    weights with TF32 matrix products) is marked as the paper's setting."""
    from rar.report import make_throughput_table

    header = "model,params,batch_size,dtype,images_per_s,tokens_per_s,machine\n"
    rows = {
        "b32": "rar_b,1,128,fp32,20.5,5248.0,H100\n",
        "b16": "rar_b,1,128,bf16,41.0,10496.0,H100\n",
        "btf": "rar_b,1,128,tf32,30.0,7680.0,H100\n",
    }
    paths = []
    for name, row in rows.items():
        paths.append(tmp_path / f"{name}.csv")
        paths[-1].write_text(header + row)
    df = make_throughput_table(
        benchmarks=paths, csv=tmp_path / "t5.csv", md=tmp_path / "t5.md", paper={"rar_b": 17.0}
    )
    assert list(df["paper_images_per_s"].fillna(-1)) == [17.0, -1, 17.0]
    assert list(df["paper_setting"]) == [False, False, True]
    md = (tmp_path / "t5.md").read_text()
    assert "| rar_b | fp32 | 128 | 20.50 | 5,248 | 17.0 | H100 |" in md
    assert "| rar_b | tf32* | 128 | 30.00 | 7,680 | 17.0 | H100 |" in md
    assert "tokenizer decoding not recorded" in md  # benchmarks without a decoder column


def test_throughput_caption_names_the_decoder_the_rows_used(tmp_path):
    """table5.md's caption says what the CSV's decoder column says: decoding included only
    where the rows decoded; rows that differ show a decoder column."""
    from rar.report import make_throughput_table

    header = "model,batch_size,dtype,decoder,images_per_s,tokens_per_s,machine\n"

    def caption(*decoders: str) -> list[str]:
        paths = []
        for k, decoder in enumerate(decoders):
            paths.append(tmp_path / f"b{k}.csv")
            paths[-1].write_text(header + f"rar_b,128,tf32,{decoder},30.0,7680.0,H100\n")
        md = tmp_path / "t5.md"
        make_throughput_table(benchmarks=paths, csv=tmp_path / "t5.csv", md=md)
        assert pd.read_csv(tmp_path / "t5.csv")["decoder"].tolist() == list(decoders)
        return md.read_text().splitlines()

    lines = caption("none")
    assert "the tokens only, no tokenizer decoding (decoder `none`)" in lines[2]
    assert lines[2].count("decoding included") == 1  # the paper's, not ours
    assert "RAR Table 5: one A100, fp32, batch 128, tokenizer decoding included" in lines[2]
    assert lines[4].startswith("| model | dtype | batch | images/s |")
    lines = caption("maskgit-vqgan", "maskgit-vqgan")
    assert "tokenizer decoding included (decoder `maskgit-vqgan`)" in lines[2]
    lines = caption("maskgit-vqgan", "none")
    assert "where the decoder column names a tokenizer" in lines[2]
    assert lines[4].startswith("| model | dtype | batch | decoder | images/s |")
    assert lines[6:] == [
        "| rar_b | tf32* | 128 | maskgit-vqgan | 30.00 | 7,680 | – | H100 |",
        "| rar_b | tf32* | 128 | none | 30.00 | 7,680 | – | H100 |",
    ]


# ##########################################################################################
# rar.report.intervals and .captions: the best row, error bars, reference rows, the verdict
# ##########################################################################################


def test_a_damaged_record_stops_the_table_and_is_named(tmp_path):
    r = row("2-3", {"anneal_start": 2, "anneal_end": 3})
    metrics = write_scored(tmp_path / "metrics.json", 60.0, 2.0)
    metrics.write_text(metrics.read_text()[:20])  # a copy cut short
    with pytest.raises(ValueError, match=r"metrics\.json: not JSON"):
        make_table(table="table2", rows=[r], metrics=[metrics], csv=tmp_path / "t2.csv")
    assert not (tmp_path / "t2.csv").exists()


def test_the_caption_says_a_two_scale_sweep_always_chooses_an_edge(tmp_path):
    def table(folder: Path, scales: list[float]) -> str:
        points = [{"guidance_scale": g, "fid": 60.0 + g} for g in scales]
        sweep = folder / "guidance.json"
        sweep.parent.mkdir(parents=True)
        sweep.write_text(json.dumps(summarize(points, "fid")))
        r = {**row("2-3", {"anneal_start": 2, "anneal_end": 3}), "sweep": sweep}
        md = folder / "t2.md"
        metrics = write_scored(folder / "metrics.json", 60.0, 2.0)
        make_table(table="table2", rows=[r], metrics=[metrics], csv=folder / "t2.csv", md=md)
        return md.read_text()

    two, three = table(tmp_path / "two", [2.0, 4.0]), table(tmp_path / "three", [1.0, 2.0, 4.0])
    assert "| 2: 62.0!, 4: 64.0 |" in two and "| 1: 61.0!, 2: 62.0, 4: 64.0 |" in three
    assert "which should then be widened; a sweep of two scales chooses an edge" in two
    assert "which should then be widened)." in three and "two scales" not in three


def test_intervals_mark_rows_beyond_the_best(tmp_path):
    df, text = anneal_table(tmp_path, GRID)
    best = df.index[df["label"] == "2-3"][0]
    assert df.loc[best, "fid_ci_low"] == 58.0 and df.loc[best, "fid_ci_high"] == 62.0
    beyond = dict(zip(df["label"], df["beyond_best"], strict=True))
    # 62 < 68 (0-2's low end): beyond; 3-4's [59, 63] overlaps [58, 62]: not beyond.
    assert beyond["0-0"] and beyond["0-2"] and beyond["4-4"]
    assert not beyond["2-3"] and not beyond["3-4"]
    lines = {
        ln.split("|")[1].strip() + "-" + ln.split("|")[2].strip(): ln
        for ln in text.splitlines()
        if ln.startswith("| ")
    }
    assert "**60.0** [58.0, 62.0]" in lines["2-3"]
    assert "80.0 [78.0, 82.0] †" in lines["0-0"]
    assert "61.0 [59.0, 63.0] |" in lines["3-4"]  # within the error bars: no mark
    assert "interval does not overlap the best row's" in text


def test_decimals_follow_the_interval(tmp_path):
    """A value and its interval keep one digit past the half-width's leading one (at most
    the column's DECIMALS); the CSV keeps every digit."""
    assert report.interval_decimals("fid", 58.37 - 70.2, 58.37 + 70.2) == 0  # +-70
    assert report.interval_decimals("fid", 58.0, 62.0) == 1  # +-2
    assert report.interval_decimals("fid", 1.40, 2.10) == 2  # +-0.35
    assert [
        report.columns.significant_decimals("fid", v) for v in (1294.37, 99.96, 25.13, 2.514, 0.1)
    ] == [0, 0, 1, 2, 2]
    assert report.interval_decimals("fid", 1.99, 2.01) == 2  # +-0.01: DECIMALS at most
    assert report.interval_decimals("fid", 2.0, 2.0) == 2  # no width: DECIMALS
    assert report.interval_decimals("val_nll", 3.9, 4.1) == 2  # +-0.1
    _, text = anneal_table(tmp_path, {**GRID, (0, 0): 158.37}, half=70.2)
    line = next(ln for ln in text.splitlines() if ln.startswith("| 0 | 0 |"))
    assert "| 158 [88, 229] |" in line
    back = pd.read_csv(tmp_path / "t2.csv")
    assert back.loc[0, "fid"] == 158.37 and back.loc[0, "fid_ci_low"] == pytest.approx(88.17)


def test_reference_rows_close_the_table_and_measure_the_gap(tmp_path):
    df, text = anneal_table(tmp_path, GRID)
    assert df["kind"].tolist()[-3:] == ["reference"] * 3
    assert df["label"].tolist()[-3:] == [FLOOR, RECONSTRUCTED, CEILING]
    assert report.gap_closed(df) == pytest.approx((220 - 60) / (220 - 20))
    bound = report.gap_closed(df, bound=RECONSTRUCTED)
    assert bound == pytest.approx((220 - 40) / (220 - 20))
    table = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert table[-3].startswith(f"| *{FLOOR}* |")
    assert table[-1].startswith(f"| *{CEILING}* |")
    assert "closes 80% of the FID gap" in text
    assert "the tokenizer's reconstructions close 90%" in text
    # Reference rows are never the best row, and never drawn in the annealing grid.
    assert report.best_index(df) == df.index[df["label"] == "2-3"][0]
    values, _ = anneal_grid(df, "fid")
    assert values.shape == (4, 4) and np.nanmin(values.to_numpy()) == 60.0
    assert_png(plot_anneal_heatmap(csv=tmp_path / "t2.csv", out=tmp_path / "heat.png"))


def test_verdict_says_yes_when_annealing_wins_beyond_the_error_bars(tmp_path):
    nll = {(0, 0): (4.10, 0.002), (2, 3): (4.00, 0.002), (4, 4): (4.20, 0.002)}
    df, text = anneal_table(tmp_path, GRID, nll)
    verdict = report.anneal_verdict(df)
    assert verdict.startswith("Does annealing beat both raster-only and random-only")
    assert "As measured, yes in FID; yes in val NLL:" in verdict
    assert "the best of 3 annealed rows, (2, 3), beats raster-only (0, 0)" in verdict
    assert text.rstrip().endswith(verdict)
    assert verdict.endswith(".") and ". " not in verdict  # one sentence
    assert df.loc[df["label"] == "2-3", "val_nll_ci_low"].iat[0] == pytest.approx(
        4.0 - 1.96 * 0.002
    )


def test_verdict_says_no_when_the_intervals_overlap(tmp_path):
    fids = {**GRID, (4, 4): 61.5}  # random-only within the best's error bars
    nll = {(0, 0): (4.00, 0.05), (2, 3): (4.01, 0.05), (4, 4): (4.20, 0.002)}
    df, _ = anneal_table(tmp_path, fids, nll)
    verdict = report.anneal_verdict(df)
    assert "As measured, no in FID; no in val NLL:" in verdict
    assert "cannot be told apart from random-only (4, 4)" in verdict
    assert "cannot be told apart from raster-only (0, 0)" in verdict
    # Annealing worse than raster-only beyond the error bars is said as such.
    worse = {**GRID, (0, 0): 40.0}
    df, _ = anneal_table(tmp_path / "w", worse)
    assert "is worse than raster-only (0, 0) beyond the error bars" in report.anneal_verdict(df)
    assert "in val NLL there are not yet the numbers to say" in report.anneal_verdict(df)


# ##########################################################################################
# rar.report.html_page
# ##########################################################################################


def test_html_page_renders_the_markdown(tmp_path):
    df, text = anneal_table(tmp_path, GRID)
    page = (tmp_path / "t2.html").read_text()
    assert page.isascii()  # character references: any charset reads it right
    assert page.startswith('<div class="rar-table" id="table-table2">')
    assert "<h1>table2</h1>" in page and "<strong>60.0</strong> [58.0, 62.0]" in page
    assert page.count("<tr>") == len(df) + 1
    assert '<td class="r">' in page and "&#8224;" in page  # right-aligned numbers, daggers
    assert "<em>real held-out images</em>" in page
    again = report.markdown_html(text, title="table2")
    assert again == page  # deterministic


# ##########################################################################################
# rar.report.figures and .table_plots: heatmaps, points with intervals
# ##########################################################################################


def test_figure_helpers_shorten_statuses_and_name_the_reference_rows(tmp_path):
    assert short_status("failed: out of memory") == "failed"
    assert short_status("ok (5,000 samples: not comparable to the paper)") == "ok"
    assert short_status(float("nan")) == "missing"
    with pytest.raises(ValueError, match="unknown metric"):
        check_metric("FID")
    nll = {(0, 0): (4.10, 0.002), (2, 3): (4.00, 0.002)}
    df, _ = anneal_table(tmp_path, GRID, nll)
    assert panel_metrics(df, "fid") == ["fid", "val_nll"]
    assert panel_metrics(df, "val_nll") == ["val_nll"]
    note = reference_note(df, "fid")
    assert (
        note.replace("\u00a0", " ") == f"{FLOOR} 20.00 · {RECONSTRUCTED} 40.00 · {CEILING} 220.00"
    )
    # a wrapped title breaks between reference rows, never inside one
    assert [ln.removesuffix(" ·") for ln in textwrap.fill(note, 34).splitlines()] == note.split(
        " · "
    )
    assert reference_note(df, "val_nll") == ""  # the reference rows have no NLL


def test_anneal_grid_places_values_at_their_cells(tmp_path):
    df = pd.read_csv(table2_csv(tmp_path))
    values, status = anneal_grid(df, "fid")
    assert list(values.index) == [0, 100, 200] and list(values.columns) == [0, 100, 200]
    assert values.loc[0, 200] == pytest.approx(2.2)
    assert values.loc[200, 200] == pytest.approx(4.2)
    assert np.isnan(values.loc[100, 100]) and status.loc[100, 100] == "missing"
    assert status.loc[200, 0] is None and np.isnan(values.loc[200, 0])  # start > end: no row
    paper, _ = anneal_grid(df, "paper_fid")
    assert paper.loc[200, 200] == 2.1 and np.isnan(paper.loc[0, 0])


def test_anneal_heatmap_writes_a_png(tmp_path):
    out = plot_anneal_heatmap(csv=table2_csv(tmp_path), out=tmp_path / "plots" / "heat.png")
    assert out == tmp_path / "plots" / "heat.png"
    assert_png(out)
    assert not list(out.parent.glob(".*.tmp"))  # the atomic write left nothing behind


@pytest.mark.parametrize("metrics", [["fid"], ["fid", "is"], ["fid", "is", "precision"]])
def test_anneal_heatmap_has_a_panel_per_metric_and_no_empty_one(tmp_path, metrics):
    """As many heatmaps as metrics, on one line up to three (no empty quarter), each with
    its colour bar and its axes named."""
    csv = table2_csv(tmp_path)
    fig = drawn_figure(plot_anneal_heatmap, csv=csv, out=tmp_path / "h.png", metrics=metrics)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == len(metrics)
    assert len(fig.axes) == 2 * len(metrics)  # each panel and its colour bar, nothing else
    assert len({round(ax.get_position().y0, 3) for ax in panels}) == 1  # one line
    assert_clear_layout(fig, panels)


def drawn_texts(plot, **kwargs) -> tuple[Path, list[str]]:
    """What `plot(**kwargs)` returns, and every text its figure holds when it is saved (axes
    titles, tick labels, annotations)."""
    from matplotlib.figure import Figure

    drawn, original = [], Figure.savefig

    def spy(fig, *args, **kw):
        for ax in fig.axes:
            drawn.extend(t.get_text() for t in [ax.title, *ax.get_yticklabels(), *ax.texts])
        return original(fig, *args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "savefig", spy)
        return plot(**kwargs), drawn


def drawn_axes(plot, **kwargs) -> list:
    """The axes of `plot(**kwargs)`'s figure as it is saved (their lines, images, texts)."""
    return drawn_figure(plot, **kwargs).axes


def drawn_figure(plot, **kwargs):
    """The figure `plot(**kwargs)` saves, drawn (its artists placed as in the PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figures, original = [], Figure.savefig

    def spy(fig, *args, **kw):
        figures.append(fig)
        return original(fig, *args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "savefig", spy)
        plot(**kwargs)
    (fig,) = figures
    FigureCanvasAgg(fig).draw()
    return fig


def assert_clear_layout(fig, data_axes: list) -> None:
    """Every axes of the figure shows something (no empty frame); each data panel names its
    axes where a reader needs it (x on each, y on the first of a line); no legend, the
    figure's or a panel's, covers any panel's data area or any title."""
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        assert ax.lines or ax.images or ax.collections or ax.texts, "an empty panel"
    for ax in data_axes:
        assert ax.get_xlabel(), ax.get_title()
        if ax.get_subplotspec().is_first_col():
            assert ax.get_ylabel(), ax.get_title()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in data_axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), ax.get_title()
        titles = [fig._suptitle, *(ax.title for ax in fig.axes)]
        for title in titles:
            if title is not None and title.get_text():
                assert not box.overlaps(title.get_window_extent(renderer)), title.get_text()


def test_anneal_heatmap_says_which_row_was_sampled_in_random_order(tmp_path):
    rows, paths = [], []
    for (s, e), fid in GRID.items():
        rows.append(row(f"{s}-{e}", {"anneal_start": s, "anneal_end": e}))
        order = "random" if (s, e) == (4, 4) else "row-major"
        paths.append(write_scored(tmp_path / f"{s}-{e}.json", fid, 2.0, sampling={"order": order}))
    csv = tmp_path / "t2.csv"
    make_table(table="table2", rows=rows, metrics=paths, csv=csv)
    out, drawn = drawn_texts(plot_anneal_heatmap, csv=csv, out=tmp_path / "heat.png")
    assert_png(out)
    marked = [t for t in drawn if "sampled in random order" in t]
    assert len(marked) == 1 and marked[0].startswith("[73.0, 77.0]")  # (4, 4): 75 +- 2


def test_metric_bars_with_missing_rows(tmp_path):
    m = write_metrics(tmp_path / "a.json", fid=1.9)
    rows = [row("b", {"model": "rar_b"}, paper={"fid": 1.95}), row("l", {"model": "rar_l"})]
    csv = tmp_path / "t4.csv"
    make_table(table="table4", rows=rows, metrics=[m, tmp_path / "none.json"], csv=csv)
    assert_png(plot_metric_bars(csv=csv, out=tmp_path / "bars.png", key="model"))
    with pytest.raises(ValueError, match="no column"):
        plot_metric_bars(csv=csv, out=tmp_path / "x.png", key="target_order")


def test_metric_points_label_values_to_their_interval(tmp_path):
    """A point's value label keeps the decimals its interval allows (interval_decimals)."""
    rows = [row("b", {"model": "rar_b"}), row("l", {"model": "rar_l"})]
    paths = [
        write_scored(tmp_path / "b.json", 158.37, 70.2),
        write_metrics(tmp_path / "l.json", fid=1.934),
    ]
    csv = tmp_path / "t4.csv"
    make_table(table="table4", rows=rows, metrics=paths, csv=csv)
    _, drawn = drawn_texts(plot_metric_bars, csv=csv, out=tmp_path / "bars.png", key="model")
    assert "158" in drawn and "1.93" in drawn  # +-70: no decimals; no interval: DECIMALS


def test_reference_rows_in_a_bar_table(tmp_path):
    """Table 3's layout (one key column): the reference rows sit under it too, and the
    points-with-intervals plot leaves them out of the axis but names them."""
    rows, paths = [], []
    for k, order in enumerate(("row-major", "spiral-in", "z-curve")):
        rows.append(row(order, {"target_order": order}))
        paths.append(write_scored(tmp_path / f"{order}.json", 50.0 + 5 * k, 3.0))
    rows.append({**row(FLOOR, {}), "kind": "reference"})
    paths.append(write_scored(tmp_path / "floor.json", 18.0, 1.0))
    csv, md = tmp_path / "t3.csv", tmp_path / "t3.md"
    df = make_table(table="table3", rows=rows, metrics=paths, csv=csv, md=md)
    assert md.read_text().splitlines()[-1].startswith(f"| *{FLOOR}* |")
    assert report.anneal_verdict(df) is None  # no annealing columns: no verdict
    assert_png(plot_metric_bars(csv=csv, out=tmp_path / "bars.png", key="target_order"))


# ##########################################################################################
# rar.report.curves: loss curves, FID over training
# ##########################################################################################


def test_loss_curves_skip_missing_runs(tmp_path):
    runs = [
        {"label": "anneal 10-30", "metrics_csv": write_train_log(tmp_path / "a" / "m.csv")},
        {"label": "raster", "metrics_csv": write_train_log(tmp_path / "b" / "m.csv", 20)},
        {"label": "lost", "metrics_csv": tmp_path / "nothing.csv"},
    ]
    assert_png(plot_loss_curves(runs=runs, out=tmp_path / "loss.png"))
    # what is drawn is each run's log: every logged (epoch, loss) in its own panel, r on the
    # right axis; the run without a log says so
    axes = drawn_axes(plot_loss_curves, runs=runs, out=tmp_path / "loss2.png")
    for run, epochs in ((runs[0], 40), (runs[1], 20)):
        log = [line.split(",") for line in run["metrics_csv"].read_text().splitlines()[1:]]
        log = [(float(r[1]), float(r[2]), float(r[5])) for r in log if len(r) == 10]
        assert len(log) == epochs * 5  # the torn last line is not a point
        panel = next(ax for ax in axes if ax.get_title() == run["label"])
        lines = [(list(ln.get_xdata()), list(ln.get_ydata())) for ln in panel.lines]
        assert ([e for e, _, _ in log], [loss for _, loss, _ in log]) in lines
        twins = [ax for ax in axes if ax is not panel and ax.bbox.bounds == panel.bbox.bounds]
        ratios = [list(ln.get_ydata()) for ax in twins for ln in ax.lines]
        assert [r for _, _, r in log] in ratios
    lost = next(ax for ax in axes if ax.get_title() == "lost")
    assert not lost.lines and "no training log yet" in [x.get_text() for x in lost.texts]
    # six panels fill two rows of three, no empty panel beside them
    six = [{"label": f"run {i}", "metrics_csv": runs[0]["metrics_csv"]} for i in range(6)]
    panels = [
        a for a in drawn_axes(plot_loss_curves, runs=six, out=tmp_path / "6.png") if a.get_title()
    ]
    assert len(panels) == 6
    assert len({round(a.get_position().x0, 3) for a in panels}) == 3  # columns
    only_missing = [{"label": "lost", "metrics_csv": tmp_path / "nothing.csv"}]
    assert_png(plot_loss_curves(runs=only_missing, out=tmp_path / "none.png", title="T"))


def test_fid_vs_epoch(tmp_path):
    points = [
        {"label": lab, "epoch": ep, "metrics": tmp_path / f"{lab}{ep}.json"}
        for lab in ("raster", "rar")
        for ep in (100, 200, 400)
    ]
    for p in points[:-1]:  # the last point is missing
        write_metrics(p["metrics"], fid=10 / (1 + p["epoch"] / 100))
    assert_png(plot_fid_vs_epoch(points=points, out=tmp_path / "fid.png"))
    # one line per label through its scored points; the missing one is left out
    (ax,) = drawn_axes(plot_fid_vs_epoch, points=points, out=tmp_path / "fid2.png")
    drawn = {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.lines}
    fid = [10 / (1 + e / 100) for e in (100, 200, 400)]
    assert drawn == {"raster": ([100, 200, 400], fid), "rar": ([100, 200], fid[:2])}
    assert_png(plot_fid_vs_epoch(points=points[-1:], out=tmp_path / "empty.png"), min_side=100)
    for p in points:  # labels as long as Table 2's
        p["label"] = f"anneal_start=200, anneal_end=400 ({p['label']}, a long label)"
    fig = drawn_figure(plot_fid_vs_epoch, points=points, out=tmp_path / "fid3.png")
    (ax,) = fig.axes
    assert len(ax.get_legend().get_texts()) == 2
    assert_clear_layout(fig, fig.axes)


def write_sweep(path: Path, fids: dict[float, float]) -> Path:
    """A guidance.json of a sweep over `fids` {scale: FID}, the lowest chosen."""
    best = min(fids, key=fids.get)
    points = [{"guidance_scale": g, "fid": f, "num_samples": 40} for g, f in fids.items()]
    record = {"format": SWEEP_FORMAT, "guidance_scale": best, "best": fids[best]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**record, "at_edge": False, "points": points}))
    return path


def test_guidance_sweeps_one_panel_per_anneal_start(tmp_path):
    """Table 2's 15 rows: a panel per anneal start (as many as are drawn, none empty), the
    anneal end's colour the same in every panel and named once in a legend clear of the
    panels, each curve's chosen scale starred; a missing sweep counted in the title."""
    pairs = [(s, e) for s in range(0, 10, 2) for e in range(s, 10, 2)]
    points = [
        {
            "label": f"anneal_start={s}, anneal_end={e}",
            "guidance": write_sweep(tmp_path / f"{s}-{e}.json", {2.0: 10 + s + e, 4.0: 11 + e}),
        }
        for s, e in pairs
    ]
    points.append({"label": "anneal_start=9, anneal_end=9", "guidance": tmp_path / "none.json"})
    out = tmp_path / "g.png"
    fig = drawn_figure(plot_guidance_sweeps, points=points, out=out)
    assert_png(out)
    assert [ax.get_title() for ax in fig.axes] == [f"anneal_start={s}" for s in range(0, 10, 2)]
    assert_clear_layout(fig, fig.axes)
    assert "1 of 16 sweeps missing" in fig.get_suptitle()
    (legend,) = fig.legends
    ends = [f"anneal_end={e}" for e in range(0, 10, 2)]
    assert [t.get_text() for t in legend.get_texts()] == [*ends, "chosen scale"]
    for ax in fig.axes:
        curves, stars = ax.lines[::2], ax.lines[1::2]
        assert len(curves) == 5 - fig.axes.index(ax)  # every row of the group, no other
        for curve, star in zip(curves, stars, strict=True):
            assert curve.get_color() == f"C{ends.index(curve.get_label())}"
            s, e = int(ax.get_title()[-1]), int(curve.get_label()[-1])
            chosen = (2.0, 10 + s + e) if 10 + s + e < 11 + e else (4.0, 11 + e)
            assert (star.get_xdata()[0], star.get_ydata()[0]) == chosen
            assert star.get_marker() == "*" and star.get_color() == curve.get_color()


def test_guidance_sweeps_without_groups(tmp_path):
    """One-field labels (Table 3's scan orders) share a panel, its legend beside it; eleven
    rows make two panels (colours never repeat in one); no sweep at all: one panel says so."""
    points = [
        {"label": f"target_order=o{i}", "guidance": write_sweep(tmp_path / f"{i}.json", {2.0: i})}
        for i in range(11)
    ]
    fig = drawn_figure(plot_guidance_sweeps, points=points[:6], out=tmp_path / "a.png")
    (ax,) = fig.axes
    assert len(ax.lines) == 12 and ax.get_legend() is not None and not fig.legends
    assert_clear_layout(fig, fig.axes)
    fig = drawn_figure(plot_guidance_sweeps, points=points, out=tmp_path / "b.png")
    assert [len(ax.lines) // 2 for ax in fig.axes] == [8, 3]
    assert_clear_layout(fig, fig.axes)
    nothing = [{"label": "x", "guidance": tmp_path / "none.json"}]
    fig = drawn_figure(plot_guidance_sweeps, points=nothing, out=tmp_path / "c.png")
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.texts] == ["no sweep yet"]


# ##########################################################################################
# rar.report.grids: scan orders, sample grids
# ##########################################################################################


def test_scan_orders_figure(tmp_path):
    assert_png(plot_scan_orders(out=tmp_path / "orders.png"), min_side=400)
    # each panel is its order: cell (r, c) shows the step at which rar.model.orders visits it, the
    # path joins the cells in that order, from the first token
    from rar.model.orders import scan_order

    for grid in (4, 8):
        axes = drawn_axes(plot_scan_orders, out=tmp_path / f"o{grid}.png", grid=grid)
        for ax in axes:
            if not ax.get_title():
                continue
            visit = scan_order(ax.get_title(), grid).numpy()
            step = np.asarray(ax.images[0].get_array()).ravel()
            assert (step[visit] == np.arange(grid * grid)).all(), ax.get_title()
            path = ax.lines[0]
            assert list(path.get_xdata()) == list(visit % grid)
            assert list(path.get_ydata()) == list(visit // grid)
    assert_png(plot_scan_orders(out=tmp_path / "two.png", grid=4, orders=["z-curve", "alternate"]))


def test_sample_grids_with_a_missing_one(tmp_path):
    rng = np.random.default_rng(0)
    grids = []
    for name in ("raster", "rar"):
        d = tmp_path / name
        d.mkdir()
        img = rng.integers(0, 255, (4 * 32, 8 * 32, 3), dtype=np.uint8)  # 4 classes x 8
        Image.fromarray(img).save(d / "grid.png")
        (d / "samples.json").write_text(json.dumps({"grid_classes": [0, 1, 2, 3]}))
        grids.append({"label": name, "png": d / "grid.png"})
    grids.append({"label": "lost", "png": tmp_path / "lost" / "grid.png"})
    assert_png(plot_sample_grids(grids=grids, out=tmp_path / "grids.png"))
    assert_png(plot_sample_grids(grids=grids, out=tmp_path / "cut.png", max_rows=2), 150)
    assert _grid_image(grids[0]["png"], max_rows=2).shape == (64, 256, 3)


def test_sample_grids_beside_real_images_with_class_names(tmp_path):
    """A grid of panels: real images of the shown classes first, the class names beside the
    first panel of each line, full labels, the random-order row said, a small file."""
    real = tmp_path / "real"
    rng = np.random.default_rng(1)
    names = ["astronaut", "camera", "chelsea", "coffee"]
    for k, name in enumerate(names):
        (real / name).mkdir(parents=True)
        for i in range(3):  # fewer than the grid's 8 per class: blank cells fill the row
            im = np.full((40, 48, 3), 60 * k, np.uint8) + rng.integers(0, 20, (40, 48, 3), np.uint8)
            Image.fromarray(im).save(real / name / f"{i}.png")
    grids = []
    for r in range(5):
        d = tmp_path / f"row{r}"
        d.mkdir()
        Image.fromarray(rng.integers(0, 255, (4 * 32, 8 * 32, 3), np.uint8)).save(d / "grid.png")
        order = "random" if r == 4 else "row-major"
        info = {"grid_classes": [0, 1, 2, 3], "sampling": {"order": order}}
        (d / "samples.json").write_text(json.dumps(info))
        grids.append(
            {"label": f"anneal_start={r}, anneal_end={r} (a long label)", "png": d / "grid.png"}
        )
    out, drawn = drawn_texts(plot_sample_grids, grids=grids, out=tmp_path / "grids.png", real=real)
    assert_png(out)
    assert out.stat().st_size < 500_000
    texts = " ".join(drawn).replace("\n", " ")
    assert "real images of these classes" in texts
    assert all(name in drawn for name in names)
    assert "anneal_start=4, anneal_end=4 (a long label) (sampled in random order)" in texts
    with Image.open(out) as im:
        assert im.mode == "P"  # a palette: photographs stay small
