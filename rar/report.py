"""`rar report`: metrics.json files -> the paper's tables (CSV, Markdown, HTML) and plots (PNG).

The last stage of DESIGN.md's data flow. Each function here is what one ~10-line
`workflow/scripts/*.py` calls (STYLE.md item 14), so the scripts hold no logic:

- `make_table`: one row per table row of the config, our metrics beside the paper's, every row
  kept: a row whose evaluation has not produced `metrics.json` shows as `missing`, or as
  `failed: <reason>` when a `failure.txt` says why (a `--keep-going` run must not hide a hole).
  Each FID carries its 95% bootstrap interval (rar.evaluate), and the rows whose interval lies
  beyond the best row's are marked: the rest cannot be told apart from it at this sample
  count. Reference rows (`kind: "reference"`: real held-out images, the floor; an untrained
  model, the ceiling) are scored the same way and placed under the table, and a table of the
  annealing grid ends with `anneal_verdict`, the paper's question answered from the numbers;
- `plot_anneal_heatmap` (RAR Table 2), `plot_metric_bars` (Tables 3 and 4: points with their
  intervals), `plot_scan_orders` (the appendix figure of the six scan orders),
  `plot_loss_curves` (small multiples), `plot_fid_vs_epoch`, `plot_sample_grids` (a grid of
  panels beside real images of the same classes).

Metrics computed with the offline demo's `efficientnet-lite0` extractor land in the same
`fid`/`is`/... columns (so one table layout and one set of plots serve both studies), but the
`extractor` column, the Markdown caption and every plot label say so: they are not Inception
FIDs. Torch-free at import time: only `plot_scan_orders` imports torch (through rar.orders).
Plots are drawn on `matplotlib.figure.Figure` objects, not pyplot, so no backend or global
figure state is involved and nothing needs closing.
"""

from __future__ import annotations

import html as html_lib
import io
import json
import math
import os
import re
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rar.experiments import CEILING, FLOOR, PAPER_SAMPLES, RECONSTRUCTED
from rar.io import atomic_open, atomic_write_bytes, atomic_write_text

PathLike = str | os.PathLike

INCEPTION = "inception-v3-compat"  # the paper's extractor (torch-fidelity, as ADM)
# Metric-name suffix per extractor, as rar.evaluate.EXTRACTORS[...].suffix (copied because that
# module imports torch; tests/test_report.py checks the two agree).
EXTRACTOR_SUFFIXES = {INCEPTION: "", "efficientnet-lite0": "_efficientnet_lite0"}

# Our column -> metrics.json key without the extractor suffix.
METRIC_KEYS = {
    "fid": "fid{s}",
    "is": "isc{s}_mean",
    "is_std": "isc{s}_std",
    "precision": "precision{s}",
    "recall": "recall{s}",
}
# metrics.json keys read as they are (the interval belongs to the record's one FID).
PLAIN_KEYS = ("fid_ci_low", "fid_ci_high", "class_accuracy", "val_nll")
# ... and the val_nll interval, when metrics.json has one (rar evaluate --heldout)
NLL_INTERVAL_KEYS = ("val_nll_ci_low", "val_nll_ci_high")
PAPER_METRICS = ("fid", "is", "precision", "recall")  # what a row's `paper:` may give
PLOT_METRICS = (*PAPER_METRICS, "class_accuracy", "val_nll")
METRIC_NAMES = {
    "fid": "FID",
    "is": "IS",
    "precision": "precision",
    "recall": "recall",
    "class_accuracy": "class accuracy",
    "val_nll": "val NLL",
}
DECIMALS = {
    "fid": 2, "is": 1, "is_std": 1, "precision": 2, "recall": 2,  # as the paper prints
    "class_accuracy": 2, "val_nll": 3,
}  # fmt: skip
LOWER_IS_BETTER = {"fid", "val_nll"}
# Metrics with a 95% interval: column -> (low column, high column).
INTERVALS = {"fid": ("fid_ci_low", "fid_ci_high"), "val_nll": ("val_nll_ci_low", "val_nll_ci_high")}
RESULT_COLUMNS = [
    "fid", "fid_ci_low", "fid_ci_high", "beyond_best", "is", "is_std", "precision", "recall",
    "class_accuracy", "val_nll", "val_nll_ci_low", "val_nll_ci_high", "n_samples", "extractor",
    "comparable", "sampling_order", "guidance_scale", "guidance_sweep", "status",
]  # fmt: skip
PAPER_COLUMNS = [c for m in PAPER_METRICS for c in (f"paper_{m}", f"{m}_diff")]
ID_COLUMNS = ["kind", "run", "evaluation", "label"]
ROW_KINDS = ("row", "reference")  # a table row, or a reference row (floor or ceiling)
BEYOND = "†"  # marks a value whose interval does not overlap the best row's
DPI = 120
MISSING = "–"  # how an unknown number reads in Markdown and on plots


# ##########################################################################################
# Reading what the other stages wrote
# ##########################################################################################


def extractor_suffix(extractor: str) -> str:
    """The suffix of `extractor`'s metric names in metrics.json ("" for Inception); an
    extractor not listed follows rar.evaluate's rule (its name, `-` turned into `_`)."""
    if extractor in EXTRACTOR_SUFFIXES:
        return EXTRACTOR_SUFFIXES[extractor]
    return "_" + re.sub(r"[^a-z0-9]+", "_", extractor.lower())


def read_metrics(path: PathLike | None) -> dict | None:
    """One evaluation's metrics.json -> our column names, or None if the file is absent.

    Returns {fid, fid_ci_low, fid_ci_high, is, is_std, precision, recall, class_accuracy,
    val_nll (float or None), n_samples, extractor, sampling_order, comparable, reasons (list
    of str)}. Raises ValueError when the file exists but lacks its extractor's FID: a
    half-understood record must not become a silent blank.
    """
    if path is None or not Path(path).exists():
        return None
    record = json.loads(Path(path).read_text())
    extractor = record.get("extractor", INCEPTION)
    s = extractor_suffix(extractor)
    if f"fid{s}" not in record:
        raise ValueError(f"{path}: no fid{s} for extractor {extractor!r}")
    out: dict[str, Any] = {col: record.get(key.format(s=s)) for col, key in METRIC_KEYS.items()}
    out.update({key: record.get(key) for key in (*PLAIN_KEYS, *NLL_INTERVAL_KEYS)})
    sampling = record.get("sampling") or {}
    out.update(
        n_samples=record.get("num_samples"),
        extractor=extractor,
        guidance_scale=sampling.get("guidance_scale"),
        sampling_order=sampling.get("order"),
        comparable=bool(record.get("comparable_to_paper", False)),
        reasons=list(record.get("not_comparable_because") or []),
    )
    return out


def read_val_nll(path: PathLike | None) -> dict | None:
    """A row's held-out NLL: {val_nll, val_nll_ci_low, val_nll_ci_high} (the interval None
    when the file gives none), or None when `path` is None or absent.

    path: a JSON object with `val_nll` and optionally `val_nll_ci_low`/`val_nll_ci_high` or
    `val_nll_se` (a 95% interval of +-1.96 standard errors); or a CSV with a `val_nll`
    column (a run's validation.csv, rar.train), whose last row counts."""
    if path is None or not Path(path).exists():
        return None
    path = Path(path)
    if path.suffix == ".csv":
        df = read_train_log(path)
        if df is None or "val_nll" not in df or df["val_nll"].isna().all():
            return None
        return {
            "val_nll": float(df["val_nll"].dropna().iloc[-1]),
            "val_nll_ci_low": None,
            "val_nll_ci_high": None,
        }
    record = json.loads(path.read_text())
    value = record.get("val_nll")
    if value is None:
        return None
    low, high = record.get("val_nll_ci_low"), record.get("val_nll_ci_high")
    se = record.get("val_nll_se")
    if low is None and high is None and se is not None:
        low, high = value - 1.96 * se, value + 1.96 * se
    return {"val_nll": float(value), "val_nll_ci_low": low, "val_nll_ci_high": high}


def read_failure(paths: PathLike | Sequence[PathLike] | None) -> str | None:
    """The reason in the first existing failure file (its first non-empty line), or None.

    `paths` may be one file or several (the evaluation's, then its run's): whichever stage
    failed first left the file."""
    if paths is None:
        return None
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for p in paths:
        if p is not None and Path(p).exists():
            lines = [ln.strip() for ln in Path(p).read_text().splitlines() if ln.strip()]
            return lines[0] if lines else "no reason recorded"
    return None


def read_train_log(path: PathLike) -> pd.DataFrame | None:
    """A run's metrics.csv (rar.train.METRICS_FIELDS; or its validation.csv) as numbers sorted
    by step, or None if absent or without rows.

    The file grows by appended lines while training runs, so a last line without its newline
    is torn and dropped; a resumed run logs again the steps after its last checkpoint, so the
    last record of each step wins. Text columns become NaN."""
    if not Path(path).exists():
        return None
    text = Path(path).read_text()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    try:
        df = pd.read_csv(io.StringIO(text), on_bad_lines="skip")
    except pd.errors.EmptyDataError:
        return None
    # A row short of its last field was cut off mid-write (a torn line that a later append
    # left inside the file).
    last = df.columns[-1]
    torn = df[last].isna()
    df = df.apply(pd.to_numeric, errors="coerce")
    df = df[~torn].dropna(subset=["step", "epoch"])
    df = df.drop_duplicates("step", keep="last").sort_values("step")
    return df if len(df) else None


def _guidance_cells(metrics: dict | None, sweep: PathLike | None) -> dict:
    """The guidance scale an evaluation used, and its sweep's FIDs ("2: 3.10, 4: 2.51*, ...",
    * = chosen, ! = chosen at an edge of the range) when a sweep chose it."""
    from rar.sweep import read_sweep

    result = read_sweep(sweep) if sweep else None
    scale = (metrics or {}).get("guidance_scale")
    if result is None:
        return {"guidance_scale": scale, "guidance_sweep": None}
    chosen = result["guidance_scale"]
    mark = "!" if result["at_edge"] else "*"
    cells = [
        f"{p['guidance_scale']:g}: {p['fid']:.2f}" + (mark if p["guidance_scale"] == chosen else "")
        for p in result["points"]
    ]
    return {
        "guidance_scale": scale if scale is not None else chosen,
        "guidance_sweep": ", ".join(cells),
    }


def _status(metrics: dict | None, failure: str | None) -> str:
    """`ok`, `ok (<why>: not comparable to the paper)`, `missing` or `failed: <reason>`.

    A metrics.json wins over a failure file: the file may be left from an earlier attempt."""
    if metrics is None:
        return f"failed: {failure}" if failure else "missing"
    if metrics["comparable"]:
        return "ok"
    facts = []
    if metrics["extractor"] != INCEPTION:
        facts.append(metrics["extractor"])
    n = metrics["n_samples"]
    if n is not None and n != PAPER_SAMPLES:
        facts.append(f"{n:,} samples")
    why = f"{', '.join(facts)}: " if facts else ""
    return f"ok ({why}not comparable to the paper)"


# ##########################################################################################
# Tables
# ##########################################################################################


def make_table(
    *,
    table: str,
    rows: list[dict],
    metrics: list,
    csv: PathLike,
    md: PathLike | None = None,
    html: PathLike | None = None,
) -> pd.DataFrame:
    """Assemble one paper table from its rows' metrics.json files; write `csv` (and `md`, and
    `html`: the Markdown page rendered, for the HTML report).

    table: the table's name (`table2`), the Markdown title.
    rows: per row {"label", "keys": {column: value}, "run", "evaluation", "paper": {"fid",
        "is", "precision", "recall"} (any subset), "failure": failure file(s) or None,
        "sweep": guidance.json or None, "kind": "row" (default) or "reference", "val_nll":
        a file with the row's held-out NLL (`read_val_nll`) or None}. Reference rows (the
        labels FLOOR and CEILING: real held-out images and an untrained model, scored like
        samples) have no keys, are never the best row, and sit after the table's rows.
    metrics: per row, the path of its metrics.json (it may not exist yet).
    Columns: the key columns (in `keys` order), RESULT_COLUMNS, paper_<m> and <m>_diff (ours
    - paper) for each metric, then kind, run, evaluation, label. Every row is kept, in order.
    `beyond_best`: whether the row's FID interval does not overlap the best row's.
    """
    if len(rows) != len(metrics):
        raise ValueError(f"{table}: {len(rows)} rows but {len(metrics)} metrics files")
    key_cols = list(dict.fromkeys(k for row in rows for k in row.get("keys", {})))
    clash = set(key_cols) & set(RESULT_COLUMNS + PAPER_COLUMNS + ID_COLUMNS)
    if clash:
        raise ValueError(f"{table}: key columns {sorted(clash)} clash with result columns")

    records, reasons = [], []
    for row, path in zip(rows, metrics, strict=True):
        kind = row.get("kind", "row")
        if kind not in ROW_KINDS:
            raise ValueError(f"{table}, row {row['label']!r}: kind {kind!r} not in {ROW_KINDS}")
        paper = dict(row.get("paper") or {})
        unknown = set(paper) - set(PAPER_METRICS)
        if unknown:
            raise ValueError(f"{table}, row {row['label']!r}: unknown paper metrics {unknown}")
        m = read_metrics(path)
        rec = {k: row.get("keys", {}).get(k) for k in key_cols}
        rec.update({c: (m or {}).get(c) for c in RESULT_COLUMNS})
        rec.update(read_val_nll(row.get("val_nll")) or {})
        rec.update(_guidance_cells(m, row.get("sweep")))
        rec["status"] = _status(m, read_failure(row.get("failure")))
        for name in PAPER_METRICS:
            ours, theirs = rec[name], paper.get(name)
            rec[f"paper_{name}"] = theirs
            # Rounded so that CSV diffs read 0.03, not 0.030000000000000027.
            both = ours is not None and theirs is not None
            rec[f"{name}_diff"] = round(ours - theirs, 6) if both else None
        rec.update(
            kind=kind, run=row.get("run"), evaluation=row.get("evaluation"), label=row["label"]
        )
        records.append(rec)
        reasons.append((m or {}).get("reasons", []))

    df = pd.DataFrame(records, columns=key_cols + RESULT_COLUMNS + PAPER_COLUMNS + ID_COLUMNS)
    # Nullable dtypes: a missing row must not turn the sample counts into floats (5000.0).
    df["n_samples"] = df["n_samples"].astype("Int64")
    for col in key_cols:  # reference rows have no keys: whole numbers must stay whole (0, not 0.0)
        known = df[col].dropna()
        if len(known) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer()
            for v in known
        ):
            df[col] = df[col].astype("Int64")
    df["comparable"] = df["comparable"].astype("boolean")
    numeric = [*METRIC_KEYS, *PLAIN_KEYS, "val_nll_ci_low", "val_nll_ci_high", *PAPER_COLUMNS]
    for col in numeric:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df["beyond_best"] = beyond_best(df).astype("boolean")
    atomic_write_text(csv, df.to_csv(index=False))
    if md is not None or html is not None:
        text = table_markdown(df, table=table, key_cols=key_cols, reasons=reasons)
        if md is not None:
            atomic_write_text(md, text)
        if html is not None:
            atomic_write_text(html, markdown_html(text, title=table))
    n_ok = int(df["status"].str.startswith("ok").sum())
    print(f"{table}: {len(df)} rows, {n_ok} with metrics -> {csv}", flush=True)
    return df


def table_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of a table proper, without its reference rows (any row of a CSV written
    before reference rows existed)."""
    return df[df["kind"] == "row"] if "kind" in df else df


def reference_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["kind"] == "reference"] if "kind" in df else df.iloc[:0]


def best_index(df: pd.DataFrame, metric: str = "fid") -> Any:
    """The index of the table row (not a reference row) with the best finite `metric`
    (lowest for FID and NLL), or None when no row has one."""
    values = table_rows(df)[metric] if metric in df else pd.Series(dtype=float)
    values = values[np.isfinite(values.astype(float))]
    if values.empty:
        return None
    return values.idxmin() if metric in LOWER_IS_BETTER else values.idxmax()


def _interval(df: pd.DataFrame, i: Any, metric: str) -> tuple[float, float] | None:
    lo_col, hi_col = INTERVALS[metric]
    if lo_col not in df:
        return None
    lo, hi = df.at[i, lo_col], df.at[i, hi_col]
    if pd.isna(lo) or pd.isna(hi):
        return None
    return float(lo), float(hi)


def beyond_best(df: pd.DataFrame, metric: str = "fid") -> pd.Series:
    """Per row: True when its `metric` interval and the best row's do not overlap (the
    difference is beyond the error bars), False when they do (and for the best row itself),
    NA when either interval is unknown. Reference rows are compared too."""
    out = pd.Series(pd.NA, index=df.index, dtype="object")
    best = best_index(df, metric)
    if best is None or _interval(df, best, metric) is None:
        return out
    b_lo, b_hi = _interval(df, best, metric)
    for i in df.index:
        ci = _interval(df, i, metric)
        if ci is not None:
            out[i] = bool(ci[0] > b_hi or ci[1] < b_lo)
    return out


def _extractors(df: pd.DataFrame) -> list[str]:
    return sorted(df["extractor"].dropna().unique()) if "extractor" in df else []


def metric_label(metric: str, extractors: Iterable[str] = (), short: bool = False) -> str:
    """`FID`, or `FID (efficientnet-lite0 features, not Inception)` when the numbers come from
    another network: a plot or header must never pass a demo FID off as an Inception FID.
    short: `FID (efficientnet-lite0)`, for table headers under a caption that says the rest.
    Metrics that do not come from the Inception features (val NLL) never carry the note."""
    name = METRIC_NAMES.get(metric, metric)
    others = ", ".join(e for e in extractors if e != INCEPTION)
    if not others or metric == "val_nll":
        return name
    return f"{name} ({others})" if short else f"{name} ({others} features, not Inception)"


def axis_label(metric: str, extractors: Iterable[str] = ()) -> str:
    """An axis label: the short metric label and which way is better."""
    better = "lower" if metric in LOWER_IS_BETTER else "higher"
    return f"{metric_label(metric, extractors, short=True)}, {better} is better"


def _fmt(value: Any, decimals: int | None = None, sign: bool = False) -> str:
    """A Markdown cell: numbers to `decimals`, unknowns as a dash, pipes escaped."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return MISSING
    if decimals is not None:
        return f"{float(value):{'+' if sign else ''}.{decimals}f}"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|")


def _known(value: Any) -> bool:
    return not (value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)))


def _is_true(value: Any) -> bool:
    """True for True (Python, numpy or pandas' nullable boolean), False for False and NA."""
    return _known(value) and bool(value)


def _metric_cell(df: pd.DataFrame, i: Any, metric: str, best: Any) -> str:
    """`12.34 [11.10, 13.60]`: the value and its interval; bold for the best row (when there
    is more than one row to be best of), BEYOND when the interval misses the best row's."""
    value = df.at[i, metric]
    if not _known(value):
        return MISSING
    d = DECIMALS[metric]
    cell = f"{float(value):.{d}f}"
    if best is not None and i == best and table_rows(df)[metric].notna().sum() > 1:
        cell = f"**{cell}**"
    ci = _interval(df, i, metric) if metric in INTERVALS else None
    if ci is not None:
        cell += f" [{ci[0]:.{d}f}, {ci[1]:.{d}f}]"
    if metric in INTERVALS and df.at[i, "kind"] == "row":  # references are not candidates
        beyond = df.at[i, "beyond_best"] if metric == "fid" else beyond_best(df, metric)[i]
        if _is_true(beyond):
            cell += f" {BEYOND}"
    return cell


def _caption(df: pd.DataFrame, reasons: list[list[str]]) -> list[str]:
    """Caption paragraphs: extractor, sample counts, intervals, reference rows, comparability,
    holes, paper columns."""
    extractors = _extractors(df)
    counts = sorted({int(n) for n in table_rows(df)["n_samples"].dropna()})
    shown = " / ".join(f"{n:,}" for n in counts) if counts else "no"
    paras = [
        f"Ours: FID, Inception Score, precision and recall from "
        f"{', '.join(f'`{e}`' for e in extractors) or 'no'} features, "
        f"{shown} samples per evaluation (the paper: {PAPER_SAMPLES:,}, Inception-V3, "
        f"against the ADM reference batch)."
    ]
    others = [e for e in extractors if e != INCEPTION]
    if others:
        paras.append(
            f"**WARNING: THESE ARE NOT INCEPTION FIDs.** The fid / is / precision / recall "
            f"columns come from {', '.join(others)} features (the offline demo's extractor); "
            f"they cannot be compared with the paper's or any published FID or IS."
        )
    if df["fid_ci_low"].notna().any():
        paras.append(
            "FID [95% interval]: a bootstrap over each row's samples (rar.evaluate; the "
            "reference held fixed). **Bold**: the lowest FID. "
            f"{BEYOND}: the row's interval does not overlap the best row's, a difference "
            "beyond the error bars; rows without the mark cannot be told apart from the best "
            "at this sample count. The paper's tables give no intervals."
        )
    if df["class_accuracy"].notna().any():
        paras.append(
            "class accuracy: the share of samples that a linear probe, fitted on the real "
            "training images' features, assigns to the class they were generated for (chance: "
            "one over the number of classes)."
        )
    if df["val_nll"].notna().any():
        paras.append(
            "val NLL: mean negative log-likelihood per token (nats) of the held-out token "
            "sequences, in the order the row samples in (a forward pass, no sampling)."
        )
    paras += _reference_caption(df)
    labels = list(df["label"])
    by_reason: dict[str, list[str]] = {}
    for label, rs in zip(labels, reasons, strict=True):
        for r in rs:
            by_reason.setdefault(r, []).append(label)
    if by_reason:
        n_bad = int((df["comparable"] == False).sum())  # noqa: E712 (nullable boolean)
        n_scored = int(df["comparable"].notna().sum())
        where = {
            r: f"all {n_scored} rows with metrics" if len(ls) == n_scored else "; ".join(ls)
            for r, ls in by_reason.items()
        }
        paras.append(
            f"**Not comparable to the paper's numbers** ({n_bad} of {len(df)} rows):\n"
            + "\n".join(f"- {r} ({w})" for r, w in where.items())
        )
    holes = [
        f"{lab} ({st})"
        for lab, st in zip(labels, df["status"], strict=True)
        if not st.startswith("ok")
    ]
    if holes:
        paras.append(f"**No metrics for {len(holes)} of {len(df)} rows:** " + "; ".join(holes))
    if df["guidance_sweep"].notna().any():
        paras.append(
            "guidance: the classifier-free guidance scale of the evaluation. The paper does not "
            "give its ablations' scale, so each row's scale was chosen by a sweep: FID at each "
            "scale on a smaller sample set (the sweep column; * = chosen, ! = chosen at an edge "
            "of the swept range, which should then be widened)."
        )
    paras.append("paper: the RAR paper's value where known (arXiv 2411.00776); Δ = ours − paper.")
    return paras


def gap_closed(df: pd.DataFrame, metric: str = "fid", bound: str | None = None) -> float | None:
    """How much of the gap from the untrained model (CEILING) to real held-out images
    (FLOOR) the best row closes, in `metric`: (ceiling - best) / (ceiling - floor); or, with
    `bound` (a reference row's label, e.g. RECONSTRUCTED), how much that row closes. None
    unless all three are known and the ceiling is above the floor."""
    refs = reference_rows(df).set_index("label")[metric] if metric in df else pd.Series()
    best = best_index(df, metric)
    if best is None or FLOOR not in refs or CEILING not in refs:
        return None
    if bound is not None and bound not in refs:
        return None
    floor, ceiling = refs[FLOOR], refs[CEILING]
    value = refs[bound] if bound is not None else df.at[best, metric]
    if not (np.isfinite(floor) and np.isfinite(ceiling)) or ceiling <= floor:
        return None
    return float((ceiling - value) / (ceiling - floor))


def _reference_caption(df: pd.DataFrame) -> list[str]:
    refs = reference_rows(df)
    if refs.empty:
        return []
    text = (
        "Reference rows, scored exactly like the samples: "
        f"*{FLOOR}* (the floor: real images no model saw, as many as one evaluation's "
        "samples, against the same reference), "
        f"*{RECONSTRUCTED}* (those images encoded and decoded by the tokenizer: the best a "
        "generator in its token space can do) and "
        f"*{CEILING}* (the ceiling: samples from a model at its initial weights)."
    )
    closed = gap_closed(df)
    if closed is not None:
        best = best_index(df)
        text += (
            f" The best row, {_row_name(df, best)}, closes {100 * closed:.0f}% of the FID gap "
            "from the ceiling to the floor"
        )
        bound = gap_closed(df, bound=RECONSTRUCTED)
        text += (
            f"; the tokenizer's reconstructions close {100 * bound:.0f}%."
            if bound is not None
            else "."
        )
    return [text]


def _row_name(df: pd.DataFrame, i: Any) -> str:
    """A row as the table names it: its anneal pair `(2, 3)`, else its label."""
    if {"anneal_start", "anneal_end"} <= set(df.columns) and _known(df.at[i, "anneal_start"]):
        return f"({df.at[i, 'anneal_start']:g}, {df.at[i, 'anneal_end']:g})"
    return str(df.at[i, "label"])


# ##########################################################################################
# The paper's question (Table 2): does annealing beat raster-only and random-only?
# ##########################################################################################


def _compare(df: pd.DataFrame, a: Any, b: Any, metric: str, name: str) -> tuple[str, bool]:
    """How row a stands against row b (called `name`) in `metric`, and whether a beats b
    beyond the error bars: 'beats <b>' / 'is worse than <b>' when the intervals do not
    overlap, 'cannot be told apart from <b>' when they do; without intervals, 'is better
    (worse) than <b>, with no interval to judge by', which never counts as beating."""
    va, vb = df.at[a, metric], df.at[b, metric]
    lower_better = metric in LOWER_IS_BETTER
    ca = _interval(df, a, metric) if metric in INTERVALS else None
    cb = _interval(df, b, metric) if metric in INTERVALS else None
    if ca is None or cb is None:
        better = va < vb if lower_better else va > vb
        word = "better" if better else "not better"
        return f"is {word} than {name}, with no interval to judge by", False
    if (ca[1] < cb[0]) if lower_better else (ca[0] > cb[1]):
        return f"beats {name}", True
    if (cb[1] < ca[0]) if lower_better else (cb[0] > ca[1]):
        return f"is worse than {name} beyond the error bars", False
    return f"cannot be told apart from {name}", False


def anneal_verdict(df: pd.DataFrame) -> str | None:
    """The paper's Table 2 question answered from `df` (a table with anneal_start and
    anneal_end columns), as one sentence: in FID and in val NLL, does the best annealed row
    beat raster-only (0, 0) and random-only (start = end = the last epoch) beyond the error
    bars? None when the table has no anneal columns or lacks a baseline or annealed row.
    The best annealed row is picked on the same numbers, which favours it slightly (the
    lowest of several noisy values): the sentence says of how many it is the best."""
    if not {"anneal_start", "anneal_end"} <= set(df.columns):
        return None
    rows = table_rows(df)
    rows = rows[rows["anneal_start"].notna() & rows["anneal_end"].notna()]
    if rows.empty:
        return None
    start, end = rows["anneal_start"].astype(float), rows["anneal_end"].astype(float)
    last = float(end.max())
    raster = rows.index[(start == 0) & (end == 0)]
    random = rows.index[(start == last) & (end == last)] if last > 0 else rows.index[:0]
    annealed = rows.index.difference(raster.union(random), sort=False)
    if raster.empty or random.empty or annealed.empty:
        return None
    raster, random = raster[0], random[0]
    parts, answers = [], []
    for metric in ("fid", "val_nll"):
        scores = df.loc[annealed, metric].astype(float)
        scores = scores[np.isfinite(scores)]
        name = METRIC_NAMES[metric]
        if scores.empty or not _known(df.at[raster, metric]) or not _known(df.at[random, metric]):
            parts.append(f"in {name} there are not yet the numbers to say")
            continue
        best = scores.idxmin() if metric in LOWER_IS_BETTER else scores.idxmax()
        vs_raster, beats_raster = _compare(
            df, best, raster, metric, f"raster-only {_row_name(df, raster)}"
        )
        vs_random, beats_random = _compare(
            df, best, random, metric, f"random-only {_row_name(df, random)}"
        )
        answers.append(f"{'yes' if beats_raster and beats_random else 'no'} in {name}")
        which = (
            f"the best of {len(scores)} annealed rows" if len(scores) > 1 else "the annealed row"
        )
        parts.append(f"in {name} {which}, {_row_name(df, best)}, {vs_raster}, and {vs_random}")
    verdict = "; ".join(answers) if answers else "not yet known"
    return (
        "Does annealing beat both raster-only and random-only training beyond the error bars? "
        f"As measured, {verdict}: " + "; ".join(parts) + "."
    )


# ##########################################################################################
# Markdown and HTML pages
# ##########################################################################################


def table_markdown(
    df: pd.DataFrame, *, table: str, key_cols: list[str], reasons: list[list[str]]
) -> str:
    """The Markdown page of one table: title, caption, pipe table (every row, with status;
    reference rows last, in italics), and for an annealing table the verdict sentence."""
    ext = _extractors(df)
    arrows = {m: ("↓" if m in LOWER_IS_BETTER else "↑") for m in PLOT_METRICS}
    best = best_index(df)
    # (header, cell function, right-aligned)
    cols: list[tuple[str, Any, bool]] = []
    label_col = key_cols[0] if key_cols else None
    for k in key_cols:
        cols.append((k, lambda i, k=k: _key_cell(df, i, k, k == label_col), False))
    if not key_cols:
        cols.append(("row", lambda i: _fmt(df.at[i, "label"]), False))

    def plain(col, d=None, sign=False):
        return lambda i: _fmt(df.at[i, col], d, sign)

    for m in PAPER_METRICS:
        header = metric_label(m, ext, short=True) + arrows[m]
        if m == "fid" and df["fid_ci_low"].notna().any():
            header += " [95% interval]"
        m_best = best if m == "fid" else None  # only FID is ranked
        cols.append((header, lambda i, m=m, b=m_best: _metric_cell(df, i, m, b), True))
        if df[f"paper_{m}"].notna().any():
            cols.append((f"paper {METRIC_NAMES[m]}", plain(f"paper_{m}", DECIMALS[m]), True))
            cols.append((f"Δ{METRIC_NAMES[m]}", plain(f"{m}_diff", DECIMALS[m], True), True))
    if df["class_accuracy"].notna().any():
        cols.append(("class accuracy↑", plain("class_accuracy", DECIMALS["class_accuracy"]), True))
    if df["val_nll"].notna().any():
        nll_best = best_index(df, "val_nll")
        cols.append(("val NLL↓", lambda i: _metric_cell(df, i, "val_nll", nll_best), True))
    if _order_varies(df, key_cols):
        cols.append(("sampling order", plain("sampling_order"), False))
    if df["guidance_scale"].notna().any():
        cols.append(("guidance", plain("guidance_scale"), True))
    if df["guidance_sweep"].notna().any():
        cols.append(("sweep: FID by scale", plain("guidance_sweep"), False))
    cols += [("samples", plain("n_samples"), True), ("status", plain("status"), False)]

    lines = [f"# {table}", "", *(p + "\n" for p in _caption(df, reasons))]
    lines.append("| " + " | ".join(h for h, *_ in cols) + " |")
    # Numbers right-aligned, names and status left.
    lines.append("|" + "|".join("---:" if right else "---" for *_, right in cols) + "|")
    order = list(table_rows(df).index) + list(reference_rows(df).index)
    for i in order:
        lines.append("| " + " | ".join(cell(i) for _, cell, _ in cols) + " |")
    verdict = anneal_verdict(df)
    if verdict:
        lines += ["", verdict]
    return "\n".join(lines) + "\n"


def _order_varies(df: pd.DataFrame, key_cols: list[str]) -> bool:
    """Whether the rows sample in different orders that no key column already shows (Table
    3's target order is its sampling order; Table 2's random-only row samples randomly)."""
    known = df[df["sampling_order"].notna()]
    if known["sampling_order"].nunique() < 2:
        return False
    orders = known["sampling_order"].astype(str).tolist()
    return not any(known[k].astype(str).tolist() == orders for k in key_cols)


def _key_cell(df: pd.DataFrame, i: Any, key: str, first: bool) -> str:
    """A key cell; a reference row shows its label, in italics, in the first key column."""
    if df.at[i, "kind"] == "reference":
        return f"*{_fmt(df.at[i, 'label'])}*" if first else ""
    return _fmt(df.at[i, key])


_INLINE = [
    (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"<em>\1</em>"),
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
]
HTML_STYLE = """\
.rar-table { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
  color: #1f2328; max-width: 100%; }
.rar-table h1 { font-size: 1.4em; margin: 0.4em 0; }
.rar-table table { border-collapse: collapse; margin: 0.8em 0; font-variant-numeric: tabular-nums; }
.rar-table th, .rar-table td { border: 1px solid #d0d7de; padding: 3px 8px; white-space: nowrap; }
.rar-table th { background: #f6f8fa; }
.rar-table tr:nth-child(even) td { background: #fafbfc; }
.rar-table td.r, .rar-table th.r { text-align: right; }
.rar-table code { background: #eff1f3; padding: 0 3px; border-radius: 3px; }
"""


def _inline_html(text: str) -> str:
    out = html_lib.escape(text, quote=False).replace("\\|", "|")
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return out


def markdown_html(text: str, *, title: str) -> str:
    """The Markdown that `table_markdown` writes as an HTML fragment (a styled `<div>`, shown
    by itself or embedded in the report's landing page): headings, paragraphs, `- ` lists,
    pipe tables with their alignment, **bold**, *italics* and `code`. Non-ASCII characters
    become character references, so the page reads right whatever charset it is served in.
    Deterministic, like the Markdown."""
    out = [f'<div class="rar-table" id="table-{html_lib.escape(title)}">', "<style>", HTML_STYLE]
    out.append("</style>")
    blocks = re.split(r"\n\s*\n", text.strip())
    for block in blocks:
        lines = block.splitlines()
        if lines[0].startswith("# "):
            out.append(f"<h1>{_inline_html(lines[0][2:])}</h1>")
            lines = lines[1:]
            if not lines:
                continue
        if lines[0].startswith("|"):
            out.append(_table_html(lines))
            continue
        para, items = [], []
        for ln in lines:
            (items if ln.startswith("- ") else para).append(ln)
        if para:
            out.append("<p>" + " ".join(_inline_html(ln) for ln in para) + "</p>")
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline_html(ln[2:])}</li>" for ln in items))
            out.append("</ul>")
    out.append("</div>")
    page = "\n".join(out) + "\n"
    return page.encode("ascii", "xmlcharrefreplace").decode("ascii")


CLASS_R = ' class="r"'


def _split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip() for c in cells]


def _table_html(lines: list[str]) -> str:
    header, align, *body = lines
    right = [a.endswith(":") for a in _split_row(align)]

    def cells(line: str, tag: str) -> str:
        return "".join(
            f"<{tag}{CLASS_R if r else ''}>{_inline_html(c)}</{tag}>"
            for c, r in zip(_split_row(line), right, strict=False)
        )

    rows = [f"<tr>{cells(header, 'th')}</tr>"] + [f"<tr>{cells(b, 'td')}</tr>" for b in body]
    return "<table>\n" + "\n".join(rows) + "\n</table>"


# ##########################################################################################
# Plot helpers
# ##########################################################################################


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, out: PathLike, *, palette: int | None = None, dpi: int = DPI) -> Path:
    """Write `fig` as a PNG atomically (a killed job leaves no half-written image).

    palette: store that many colours (median cut, no dithering) instead of full RGB, for
    figures full of photographs or of many antialiased lines, which otherwise make megabyte
    PNGs (and an HTML report of tens of MB)."""
    out = Path(out)
    if not palette:
        with atomic_open(out, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi)
    else:
        from PIL import Image

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        rgb = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        small = rgb.quantize(
            colors=palette, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
        buf = io.BytesIO()
        small.save(buf, format="PNG", optimize=True)
        atomic_write_bytes(out, buf.getvalue())
    print(f"wrote {out}", flush=True)
    return out


def _wrap_to(fig, text: str, fontsize: float) -> str:
    """`text` wrapped to the figure's width (an average glyph: ~0.55 of the font size)."""
    chars = fig.get_figwidth() * 72 / (0.55 * fontsize)
    return textwrap.fill(text, max(20, int(chars * 0.95)))


def _check_metric(metric: str) -> None:
    if metric not in PLOT_METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(PLOT_METRICS)}")


def _short_status(status: Any) -> str:
    """`failed: out of memory` -> `failed` (a cell or bar has no room for the reason)."""
    return str(status).split(":")[0].split(" (")[0] if isinstance(status, str) else "missing"


def _panel_metrics(df: pd.DataFrame, metric: str) -> list[str]:
    """`metric`, then class accuracy and val NLL where the table has them."""
    extra = [m for m in ("class_accuracy", "val_nll") if m in df and df[m].notna().any()]
    return [metric, *(m for m in extra if m != metric)]


def _reference_note(df: pd.DataFrame, metric: str) -> str:
    """`real held-out images 12.3 · untrained model 250.1` (the reference rows' values)."""
    refs = reference_rows(df)
    if refs.empty or metric not in refs:
        return ""
    d = DECIMALS[metric]
    parts = [f"{r['label']} {_fmt(r[metric], d)}" for _, r in refs.iterrows() if _known(r[metric])]
    return " · ".join(parts)


# ##########################################################################################
# Table plots
# ##########################################################################################


def anneal_grid(df: pd.DataFrame, column: str = "fid") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2's rows (reference rows left out) -> (values, status) grids, index
    anneal_start, columns anneal_end (ascending). values: `column` (a metric, or
    paper_<metric>), NaN where unknown; status: the row's status, None where no row of the
    table has that (start, end) (start > end)."""
    if column not in df:
        raise ValueError(f"no column {column!r}; columns: {', '.join(df.columns)}")
    df = table_rows(df)
    starts = sorted(df["anneal_start"].unique())
    ends = sorted(df["anneal_end"].unique())
    values = pd.DataFrame(np.nan, index=starts, columns=ends)
    status = pd.DataFrame(np.full((len(starts), len(ends)), None), index=starts, columns=ends)
    values.index.name = status.index.name = "anneal_start"
    values.columns.name = status.columns.name = "anneal_end"
    for _, r in df.iterrows():
        s, e = r["anneal_start"], r["anneal_end"]
        if pd.notna(status.at[s, e]):
            raise ValueError(f"two rows with anneal_start={s}, anneal_end={e}")
        values.at[s, e] = r[column]
        status.at[s, e] = r["status"]
    return values, status


def plot_anneal_heatmap(
    *, csv: PathLike, out: PathLike, metric: str = "fid", metrics: Sequence[str] | None = None
) -> Path:
    """RAR Table 2 as heatmaps over (anneal_start, anneal_end), one panel per metric (default
    `metric`, then class accuracy and val NLL where known): values annotated with their 95%
    interval (and the paper's value where known), the best cell boxed, cells whose interval
    misses the best's marked BEYOND, rows without metrics hatched; the reference rows'
    values under each panel."""
    df = pd.read_csv(csv)
    panels = list(metrics) if metrics else _panel_metrics(df, metric)
    for m in panels:
        _check_metric(m)
    values = anneal_grid(df, panels[0])[0]
    ext = _extractors(df)
    ncols = min(2, len(panels))  # two panels a line: the page stays about as wide as high
    nrows = math.ceil(len(panels) / ncols)
    width = 1.25 * len(values.columns) + 2.6
    fig = _figure(width * ncols, (0.95 * len(values.index) + 2.0) * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, m in zip(axes, panels, strict=False):
        _heatmap_panel(fig, ax, df, m, ext)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    title = (
        "By randomness-annealing schedule (RAR Table 2): best cell boxed; [95% interval]; "
        f"{BEYOND} = interval does not overlap the best's"
    )
    fig.suptitle(_wrap_to(fig, title, 10), fontsize=10)
    return _save(fig, out)


def _heatmap_panel(fig, ax, df: pd.DataFrame, metric: str, ext: list[str]) -> None:
    from matplotlib.patches import Rectangle

    values, status = anneal_grid(df, metric)
    paper = anneal_grid(df, f"paper_{metric}")[0] if f"paper_{metric}" in df else None
    rows = table_rows(df)
    beyond = beyond_best(rows.reset_index(drop=True), metric) if metric in INTERVALS else None
    where = {(r["anneal_start"], r["anneal_end"]): k for k, (_, r) in enumerate(rows.iterrows())}
    lower = metric in LOWER_IS_BETTER
    cmap = "viridis_r" if lower else "viridis"  # bright = better
    arr = values.to_numpy(dtype=float)
    im = ax.imshow(np.ma.masked_invalid(arr), cmap=cmap, aspect="auto")
    fig.colorbar(im, ax=ax, label=axis_label(metric, ext), shrink=0.9)
    finite = np.isfinite(arr)
    best = None
    if finite.any():
        flat = np.where(finite, arr, np.inf if lower else -np.inf)
        best = np.unravel_index(flat.argmin() if lower else flat.argmax(), arr.shape)
    lo, hi = (np.nanmin(arr), np.nanmax(arr)) if finite.any() else (0.0, 1.0)
    d = DECIMALS[metric]
    lo_col, hi_col = INTERVALS.get(metric, (None, None))
    for i, j in np.ndindex(arr.shape):
        st = status.iat[i, j]
        if st is None:  # not a row of the table (start > end): left blank
            continue
        if not finite[i, j]:
            ax.add_patch(
                Rectangle(
                    (j - 0.5, i - 0.5), 1, 1, facecolor="0.85", hatch="///", edgecolor="0.6", lw=0
                )
            )
            ax.text(j, i, _short_status(st), ha="center", va="center", fontsize=8, color="0.3")
            continue
        k = where[(values.index[i], values.columns[j])]
        r = rows.iloc[k]
        text = f"{arr[i, j]:.{d}f}"
        if beyond is not None and beyond.iat[k] is True:
            text += BEYOND
        small = []
        if lo_col and _known(r.get(lo_col)) and _known(r.get(hi_col)):
            small.append(f"[{r[lo_col]:.{d}f}, {r[hi_col]:.{d}f}]")
        if paper is not None and np.isfinite(paper.iat[i, j]):
            small.append(f"paper {paper.iat[i, j]:.{d}f}")
        # Dark text on the bright end of the ramp, white on the dark end.
        t = (arr[i, j] - lo) / (hi - lo) if hi > lo else 0.5
        bright = t < 0.5 if lower else t > 0.5
        color = "black" if bright else "white"
        ax.text(
            j,
            i - (0.12 if small else 0),
            text,
            ha="center",
            va="center",
            fontsize=9,
            color=color,
            fontweight="bold" if best == (i, j) else "normal",
        )
        if small:
            ax.text(
                j, i + 0.22, "\n".join(small), ha="center", va="center", fontsize=6.5, color=color
            )
    if best is not None:
        ax.add_patch(
            Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5)
        )
    ax.set_xticks(range(len(values.columns)), [f"{c:g}" for c in values.columns])
    ax.set_yticks(range(len(values.index)), [f"{c:g}" for c in values.index])
    ax.set_xlabel("anneal end (epoch)")
    ax.set_ylabel("anneal start (epoch)")
    # The extractor's name makes the label long: wrapped, so it is never clipped.
    title = textwrap.fill(metric_label(metric, ext), 40)
    note = _reference_note(df, metric)
    if note:
        title += "\n" + textwrap.fill(note, 48)
    ax.set_title(title, fontsize=9)


def plot_metric_bars(
    *,
    csv: PathLike,
    out: PathLike,
    key: str,
    metric: str = "fid",
    metrics: Sequence[str] | None = None,
) -> Path:
    """One point per table row with its 95% interval, labelled by column `key` (Table 3:
    target_order, Table 4: model), one panel per metric (default `metric`, then class
    accuracy and val NLL where known). The axis fits the values, not zero, so that the
    differences show; the best row's interval is a band across the panel, so a glance says
    which rows overlap it. The paper's values as red diamonds; rows without metrics marked;
    the reference rows' values in the panel title."""
    from matplotlib.transforms import blended_transform_factory

    df = pd.read_csv(csv)
    if key not in df:
        raise ValueError(f"{csv}: no column {key!r}; columns: {', '.join(df.columns)}")
    panels = list(metrics) if metrics else _panel_metrics(df, metric)
    for m in panels:
        _check_metric(m)
    ext = _extractors(df)
    rows = table_rows(df).reset_index(drop=True)
    x = np.arange(len(rows))
    fig = _figure(max(5.0, 0.9 * len(rows) + 2.0), 3.0 * len(panels) + 0.6)
    axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True)[:, 0]
    for ax, m in zip(axes, panels, strict=True):
        ours = rows[m].to_numpy(dtype=float)
        lo_col, hi_col = INTERVALS.get(m, (None, None))
        has_ci = lo_col in rows and rows[lo_col].notna().any()
        lo = rows[lo_col].to_numpy(dtype=float) if has_ci else np.full(len(rows), np.nan)
        hi = rows[hi_col].to_numpy(dtype=float) if has_ci else np.full(len(rows), np.nan)
        best = best_index(rows, m)
        if best is not None and np.isfinite(lo[best]):
            ax.axhspan(
                lo[best],
                hi[best],
                color="tab:green",
                alpha=0.15,
                lw=0,
                label="best row's 95% interval",
            )
        beyond = beyond_best(rows, m) if m in INTERVALS else pd.Series(pd.NA, index=rows.index)
        for i, v in enumerate(ours):
            if not np.isfinite(v):
                ax.text(
                    i,
                    0.03,
                    _short_status(rows["status"].iat[i]),
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    color="0.4",
                    transform=blended_transform_factory(ax.transData, ax.transAxes),
                )
                continue
            color = "tab:green" if i == best else ("0.45" if beyond.iat[i] is True else "tab:blue")
            err = None
            if np.isfinite(lo[i]) and np.isfinite(hi[i]):
                err = [[max(0.0, v - lo[i])], [max(0.0, hi[i] - v)]]
            ax.errorbar([i], [v], yerr=err, fmt="o", color=color, ms=6, capsize=4, lw=1.5)
            ax.annotate(
                f"{v:.{DECIMALS[m]}f}" + (BEYOND if beyond.iat[i] is True else ""),
                (i, v),
                xytext=(7, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
        theirs = rows.get(f"paper_{m}", pd.Series(np.nan, index=rows.index)).to_numpy(float)
        if np.isfinite(theirs).any():
            paper = "paper" if set(ext) <= {INCEPTION} else "paper (Inception)"
            ax.scatter(x, theirs, marker="D", color="tab:red", zorder=3, label=paper)
        ax.set_ylabel(textwrap.fill(axis_label(m, ext), 30), fontsize=9)
        title = metric_label(m, ext)
        note = _reference_note(df, m)
        ax.set_title(title + (f"\nreference rows: {note}" if note else ""), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(x=0.08, y=0.15)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=7)
    labels = [str(v) for v in rows[key]]
    long = len(rows) > 4 or max((len(s) for s in labels), default=0) > 10
    axes[-1].set_xticks(x, labels, rotation=30 if long else 0, ha="right" if long else "center")
    axes[-1].set_xlabel(key)
    title = (
        f"By {key}: points with 95% intervals; green = best row; grey with {BEYOND} = interval "
        "beyond the best's"
    )
    fig.suptitle(_wrap_to(fig, title, 9), fontsize=9)
    return _save(fig, out)


# ##########################################################################################
# Scan orders (RAR appendix figure; Table 3's target orders)
# ##########################################################################################


def plot_scan_orders(*, out: PathLike, grid: int = 16, orders: Sequence[str] | None = None) -> Path:
    """The scan orders (default all six of rar.orders.SCAN_ORDERS) drawn as the paper's
    supplementary Fig. 6 draws them: on the `grid` x `grid` token grid (the paper's 16x16 by
    default, whatever grid a study trains on), each cell prints the step at which it is visited
    and is coloured by it (early dark, late bright), and a thin line joins the cell centres in
    visiting order. 2 x 3 panels for the six orders."""
    from matplotlib import colormaps, patheffects

    from rar.orders import SCAN_ORDERS, scan_order  # imports torch

    orders = list(orders or SCAN_ORDERS)
    ncols = min(3, len(orders))
    nrows = math.ceil(len(orders) / ncols)
    side = 4.8 if grid >= 16 else 3.3  # 16x16 needs ~35 px a cell for three-digit numbers
    fig = _figure(side * ncols, (side + 0.3) * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    cmap = colormaps["viridis"]
    n = grid * grid
    for ax, name in zip(axes, orders, strict=False):  # spare panels stay empty
        visit = scan_order(name, grid).numpy()  # visit[k] = raster index of the k-th token
        step = np.empty(n, dtype=int)
        step[visit] = np.arange(n)  # the inverse: raster index -> visiting step
        ax.imshow(step.reshape(grid, grid), cmap=cmap, vmin=0, vmax=n - 1)
        rows, cols = np.divmod(visit, grid)
        # The whole path, long jumps included (subsample, z-curve, row-major line ends), as
        # in Fig. 6: thin and faint; each number is outlined in its cell's colour, which
        # masks the lines crossing it.
        ax.plot(cols, rows, color="white", lw=0.5, alpha=0.5)
        ax.plot(cols[0], rows[0], "o", ms=9 * 16 / grid, mfc="none", mec="red", mew=1.2)
        if grid <= 16:  # numbers stop being readable beyond that
            for k, (r, c) in enumerate(zip(rows, cols, strict=True)):
                red, green, blue, _ = rgba = cmap(k / (n - 1))
                light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5  # luma of the cell
                ax.text(
                    c,
                    r,
                    str(k),
                    ha="center",
                    va="center",
                    fontsize=max(5.0, 88 / grid),
                    color="black" if light else "white",
                    path_effects=[patheffects.withStroke(linewidth=2, foreground=rgba)],
                )
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(orders) :]:
        ax.set_axis_off()
    fig.suptitle(
        f"Scan orders on a {grid}x{grid} token grid (RAR Table 3, supplementary Fig. 6): "
        "number = visiting step, red circle = first token"
    )
    return _save(fig, out)


# ##########################################################################################
# Training curves and FID over training
# ##########################################################################################


def _held_out_log(run: dict) -> pd.DataFrame | None:
    """A run's held-out NLL log (rar.train's validation.csv beside metrics.csv, or the run's
    `validation_csv`), or None."""
    path = run.get("validation_csv") or Path(run["metrics_csv"]).with_name("validation.csv")
    df = read_train_log(path)
    if df is None:
        return None
    column = "val_loss" if "val_loss" in df else "val_nll"  # the NLL in the run's own order
    if column not in df or df[column].isna().all():
        return None
    return df[["epoch", column]].rename(columns={column: "nll"}).dropna()


def plot_loss_curves(
    *, runs: list[dict], out: PathLike, title: str | None = None, ncols: int = 5
) -> Path:
    """Small multiples, one panel per run (same axes everywhere): its training loss (faint:
    per logged step; solid: a running mean over ~2% of the points), every other run's running
    mean in light grey behind it for comparison, its held-out NLL where rar.train logged one
    (points), and the randomness r on the right axis. The legend sits under the panels.

    runs: [{"label", "metrics_csv"}, optionally "validation_csv"]; a run whose file is absent
    or empty gets a panel that says so."""
    from matplotlib.lines import Line2D

    logs = [read_train_log(run["metrics_csv"]) for run in runs]
    smooth = {}
    for k, df in enumerate(logs):
        if df is not None:
            window = max(1, len(df) // 50)
            smooth[k] = (df["epoch"], df["loss"].rolling(window, min_periods=1).mean())
    n = max(1, len(runs))
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = _figure(2.9 * ncols + 0.8, 2.3 * nrows + 1.2)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    # The first steps' loss (~log of the codebook size) would squash the rest: the axis shows
    # the running means after the first 5% of training.
    late = [s[(e >= 0.05 * e.max())] for e, s in smooth.values()]
    late = [s for s in late if len(s)]
    if late:
        lo = min(float(s.min()) for s in late)
        hi = max(float(s.max()) for s in late)
        pad = 0.08 * (hi - lo) if hi > lo else 0.1
        axes[0, 0].set_ylim(lo - pad, hi + pad)
    color, r_color = "tab:blue", "tab:orange"
    missing = []
    for k in range(nrows * ncols):
        ax = axes.flat[k]
        if k >= len(runs):
            ax.set_axis_off()
            continue
        run, df = runs[k], logs[k]
        ax.set_title(textwrap.fill(run["label"], 34), fontsize=8)
        ax.grid(alpha=0.25)
        if df is None:
            missing.append(run["label"])
            ax.text(
                0.5,
                0.5,
                "no training log yet",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="0.4",
                fontsize=8,
            )
            continue
        for j, (ep, sm) in smooth.items():
            if j != k:
                ax.plot(ep, sm, color="0.82", lw=0.8, zorder=1)
        ax.plot(df["epoch"], df["loss"], color=color, alpha=0.2, lw=0.6, zorder=2)
        ax.plot(*smooth[k], color=color, lw=1.6, zorder=3)
        held = _held_out_log(run)
        if held is not None:
            ax.plot(held["epoch"], held["nll"], "o", color="tab:purple", ms=3.5, zorder=4)
        if "ratio" in df:
            twin = ax.twinx()
            twin.plot(df["epoch"], df["ratio"], color=r_color, lw=1.0, ls="--")
            twin.set_ylim(-0.05, 1.05)
            if k % ncols == ncols - 1 or k == len(runs) - 1:
                twin.set_ylabel("r", color=r_color)
            else:
                twin.set_yticklabels([])
            twin.tick_params(axis="y", colors=r_color, labelsize=7)
        ax.tick_params(labelsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("loss (nats/token)", fontsize=8)
    for ax in axes[-1, :]:
        ax.set_xlabel("epoch", fontsize=8)
    handles = [
        Line2D([], [], color=color, lw=1.6, label="this run's training loss (running mean)"),
        Line2D([], [], color="0.82", lw=0.8, label="the other runs (running mean)"),
        Line2D([], [], color=r_color, lw=1.0, ls="--", label="randomness r (right axis)"),
    ]
    if any(
        _held_out_log(run) is not None for run, df in zip(runs, logs, strict=True) if df is not None
    ):
        handles.append(
            Line2D([], [], color="tab:purple", marker="o", ls="", ms=3.5, label="held-out NLL")
        )
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    text = title or "Training loss and permutation probability r (RAR §3.2)"
    if missing:
        text += f"\nmissing: {', '.join(missing)}"
    fig.suptitle(text, fontsize=10)
    return _save(fig, out, palette=256)


def plot_fid_vs_epoch(*, points: list[dict], out: PathLike, metric: str = "fid") -> Path:
    """`metric` (default FID) of checkpoints against their epoch, one line per label.

    points: [{"label", "epoch", "metrics"}]; points without metrics.json are skipped and
    counted in the title."""
    _check_metric(metric)
    series: dict[str, list[tuple[float, float]]] = {}
    extractors, missing = set(), 0
    for p in points:
        m = read_metrics(p["metrics"])
        series.setdefault(p["label"], [])  # keep the label order even if all are missing
        if m is None or m[metric] is None:
            missing += 1
            continue
        extractors.add(m["extractor"])
        series[p["label"]].append((float(p["epoch"]), float(m[metric])))
    label = metric_label(metric, sorted(extractors))
    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot()
    drawn = 0
    for name, xy in series.items():
        if xy:
            ep, val = zip(*sorted(xy), strict=True)
            ax.plot(ep, val, marker="o", label=name)
            drawn += 1
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(
            0.5,
            0.5,
            "no metrics yet",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="0.4",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(axis_label(metric, sorted(extractors)))
    text = f"{label} over training"
    if missing:
        text += f" ({missing} of {len(points)} points missing)"
    ax.set_title(text, fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, out)


def plot_guidance_sweeps(*, points: list[dict], out: PathLike) -> Path:
    """FID against the guidance scale, one line per row, the chosen scale marked.

    points: [{"label", "guidance": a sweep's guidance.json}]; rows whose sweep has not run
    are counted in the title. Small multiples when there are more than eight rows, so that
    colours never repeat within a panel."""
    from rar.sweep import read_sweep

    sweeps = [(p["label"], read_sweep(p["guidance"])) for p in points]
    done = [(label, s) for label, s in sweeps if s is not None]
    per_panel = 8
    panels = [done[i : i + per_panel] for i in range(0, len(done), per_panel)] or [[]]
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig = _figure(5.0 * cols, 3.8 * rows)
    for k, panel in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        for i, (label, sweep) in enumerate(panel):
            xs = [pt["guidance_scale"] for pt in sweep["points"]]
            ys = [pt["fid"] for pt in sweep["points"]]
            color = f"C{i}"
            ax.plot(xs, ys, marker="o", ms=3, color=color, label=label)
            ax.plot([sweep["guidance_scale"]], [sweep["best"]], marker="*", ms=12, color=color)
        if panel:
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, "no sweep yet", transform=ax.transAxes, ha="center", color="0.4")
        ax.set_xlabel("guidance scale")
        ax.set_ylabel("FID (sweep samples)")
        ax.grid(alpha=0.3)
    n_samples = {pt.get("num_samples") for _, s in done for pt in s["points"]} - {None}
    title = "FID against guidance scale\n(* = the scale the table's evaluation used"
    if n_samples:
        title += f"; {'/'.join(f'{n:,}' for n in sorted(n_samples))} samples per point"
    title += ")"
    if len(done) < len(sweeps):
        title += f"; {len(sweeps) - len(done)} of {len(sweeps)} sweeps missing"
    fig.suptitle(title, fontsize=10)
    return _save(fig, out)


# ##########################################################################################
# Sample grids
# ##########################################################################################


def _grid_info(png: PathLike) -> dict:
    """samples.json beside a grid.png (rar.sample), or {}."""
    info = Path(png).with_name("samples.json")
    return json.loads(info.read_text()) if info.exists() else {}


def _grid_image(png: PathLike, max_rows: int | None) -> np.ndarray | None:
    """A grid.png as an array, cut to its first `max_rows` rows of samples. The sample height
    comes from samples.json beside it (`grid_classes`: one grid row per class, rar.sample);
    without that file the grid is shown whole."""
    from PIL import Image

    png = Path(png)
    if not png.exists():
        return None
    img = np.asarray(Image.open(png).convert("RGB"))
    n_rows = len(_grid_info(png).get("grid_classes") or [])
    if max_rows is not None and n_rows:
        img = img[: img.shape[0] // n_rows * min(max_rows, n_rows)]
    return img


def _real_grid(
    folder: PathLike, classes: list[int], names: list[str], side: int, per_class: int
) -> np.ndarray | None:
    """Real images laid out as a sample grid: for each class id of `classes`, the first
    `per_class` images (sorted by name) of `folder/<names[id]>/`, centre-cropped to a square
    and resized to `side` pixels."""
    from PIL import Image

    rows = []
    for c in classes:
        if c >= len(names):
            return None
        files = sorted(
            p
            for p in (Path(folder) / names[c]).iterdir()
            if p.suffix.lower() in {".png", ".jpg", ".jpeg"}
        )[:per_class]
        cells = []
        for f in files:
            with Image.open(f) as im:
                im = im.convert("RGB")
                s = min(im.size)
                left, top = (im.width - s) // 2, (im.height - s) // 2
                im = im.resize((side, side), Image.BICUBIC, box=(left, top, left + s, top + s))
                cells.append(np.asarray(im))
        cells += [np.full((side, side, 3), 255, np.uint8)] * (per_class - len(cells))
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0) if rows else None


def plot_sample_grids(
    *,
    grids: list[dict],
    out: PathLike,
    max_rows: int | None = None,
    real: PathLike | None = None,
    class_names: Sequence[str] | None = None,
    ncols: int = 4,
    panel: float | None = None,
) -> Path:
    """The sample grid of every row as a grid of panels, each with its full label, the first
    panel real images of the same classes (`real`: a folder of class folders, e.g. the
    demo's images/val), and the class names beside the first panel of each line. A panel
    sampled in random order says so; a missing grid is a blank panel that says so.

    grids: [{"label", "png"}] (rar.sample's grid.png: one row per class of samples.json's
    `grid_classes`); max_rows: sample rows kept per grid; class_names: the name of each class
    id (default: the sorted class folders of `real`, the ids rar.data.images assigns);
    ncols / panel: panels per line and their width in inches (default: the grid's own pixels,
    at most 2.7 in, so small images are never resampled). Stored with a 256-colour palette,
    so a page of photographs stays a few hundred kB."""
    images = [_grid_image(g["png"], max_rows) for g in grids]
    infos = [_grid_info(g["png"]) for g in grids]
    shown = next((i["grid_classes"] for i in infos if i.get("grid_classes")), None)
    if max_rows is not None and shown:
        shown = shown[:max_rows]
    names = list(class_names) if class_names else None
    if names is None and real is not None and Path(real).is_dir():
        names = sorted(e.name for e in os.scandir(real) if e.is_dir())
    found = [im for im in images if im is not None]
    panels: list[tuple[str, np.ndarray | None]] = []
    if real is not None and shown and names and found:
        side = found[0].shape[0] // len(shown)
        per_class = found[0].shape[1] // side
        real_img = _real_grid(real, shown, names, side, per_class)
        if real_img is not None:
            panels.append(("real images of these classes", real_img))
    for g, im, info in zip(grids, images, infos, strict=True):
        label = g["label"]
        if (info.get("sampling") or {}).get("order") == "random":
            label += " (sampled in random order)"
        panels.append((label, im))
    # A missing panel takes the shape of the others so that the page keeps its rhythm.
    aspect = float(np.median([im.shape[0] / im.shape[1] for im in found])) if found else 1.0
    if panel is None:
        panel = min(2.7, max(1.6, found[0].shape[1] / DPI)) if found else 2.7
    n = max(1, len(panels))
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    left = 1.3 if shown and names else 0.2
    fig = _figure(panel * ncols + left, (panel * aspect + 0.45) * nrows + 0.3)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(panels):
            ax.set_axis_off()
            continue
        label, im = panels[k]
        if im is None:
            ax.imshow(np.full((100, round(100 / aspect), 3), 235, dtype=np.uint8))
            ax.text(
                0.5,
                0.5,
                "missing",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="0.3",
                fontsize=9,
            )
        else:
            ax.imshow(im, interpolation="nearest" if im.shape[1] < 400 else "antialiased")
        ax.set_title(textwrap.fill(label, max(12, round(panel * 15))), fontsize=8)
        ax.set_xticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        if k % ncols == 0 and shown and names and im is not None:
            step = im.shape[0] / len(shown)
            ax.set_yticks(
                [step * (r + 0.5) for r in range(len(shown))],
                [names[c] if c < len(names) else str(c) for c in shown],
                fontsize=8,
            )
            ax.tick_params(axis="y", length=0)
        else:
            ax.set_yticks([])
    if not grids:
        axes[0, 0].text(0.5, 0.5, "no sample grids", ha="center", va="center")
    return _save(fig, out, palette=128)  # 128 colours: ~450 kB for 17 demo panels


# ##########################################################################################
# Table 5: sampling throughput
# ##########################################################################################


def make_throughput_table(
    *, benchmarks: Sequence[PathLike], csv: PathLike, md: PathLike | None = None, paper=None
) -> pd.DataFrame:
    """RAR Table 5 from `rar bench-sample` CSVs (one row each): images/s and tokens/s per
    model and dtype, with the paper's fp32 images/s (one A100, tokenizer decoding included)
    beside ours where `paper` ({model: images/s}) gives it."""
    paper = paper or {}
    frames = [pd.read_csv(path) for path in benchmarks]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not df.empty:
        is_fp32 = df["dtype"] == "fp32"
        df["paper_images_per_s"] = [
            paper.get(m) if fp32 else None for m, fp32 in zip(df["model"], is_fp32, strict=True)
        ]
        df["paper_images_per_s"] = pd.to_numeric(df["paper_images_per_s"]).astype(float)
    atomic_write_text(csv, df.to_csv(index=False))
    if md is not None:
        lines = [
            "# table5: sampling throughput",
            "",
            "Images per second generated with the KV cache and classifier-free guidance, "
            "tokenizer decoding included (RAR Table 5: one A100, fp32, batch 128). Measured "
            "on the machines named in the last column; compare only rows of the same machine.",
            "",
            "| model | dtype | batch | images/s | tokens/s | paper images/s | machine |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in df.to_dict("records"):
            lines.append(
                f"| {r['model']} | {r['dtype']} | {r['batch_size']} | {r['images_per_s']:.2f} "
                f"| {r['tokens_per_s']:,.0f} | {_fmt(r.get('paper_images_per_s'), 1)} "
                f"| {r['machine']} |"
            )
        atomic_write_text(md, "\n".join(lines) + "\n")
    return df
