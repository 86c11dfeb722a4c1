"""`rar report`: metrics.json files -> the paper's tables (CSV + Markdown) and plots (PNG).

The last stage of DESIGN.md's data flow. Each function here is what one ~10-line
`workflow/scripts/*.py` calls (STYLE.md item 14), so the scripts hold no logic:

- `make_table`: one row per table row of the config, our metrics beside the paper's, every row
  kept: a row whose evaluation has not produced `metrics.json` shows as `missing`, or as
  `failed: <reason>` when a `failure.txt` says why (a `--keep-going` run must not hide a hole);
- `plot_anneal_heatmap` (RAR Table 2), `plot_metric_bars` (Tables 3 and 4),
  `plot_scan_orders` (the appendix figure of the six scan orders), `plot_loss_curves`,
  `plot_fid_vs_epoch`, `plot_sample_grids`.

Metrics computed with the offline demo's `efficientnet-lite0` extractor land in the same
`fid`/`is`/... columns (so one table layout and one set of plots serve both studies), but the
`extractor` column, the Markdown caption and every plot label say so: they are not Inception
FIDs. Torch-free at import time: only `plot_scan_orders` imports torch (through rar.orders).
Plots are drawn on `matplotlib.figure.Figure` objects, not pyplot, so no backend or global
figure state is involved and nothing needs closing.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rar.experiments import PAPER_SAMPLES
from rar.io import atomic_open, atomic_write_text

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
PAPER_METRICS = ("fid", "is", "precision", "recall")  # what a row's `paper:` may give
METRIC_NAMES = {"fid": "FID", "is": "IS", "precision": "precision", "recall": "recall"}
DECIMALS = {"fid": 2, "is": 1, "is_std": 1, "precision": 2, "recall": 2}  # as the paper prints
LOWER_IS_BETTER = {"fid"}
RESULT_COLUMNS = [
    "fid", "is", "is_std", "precision", "recall", "n_samples", "extractor", "comparable",
    "guidance_scale", "guidance_sweep", "status",
]  # fmt: skip
PAPER_COLUMNS = [c for m in PAPER_METRICS for c in (f"paper_{m}", f"{m}_diff")]
ID_COLUMNS = ["run", "evaluation", "label"]
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

    Returns {fid, is, is_std, precision, recall (float or None), n_samples, extractor,
    comparable, reasons (list of str)}. Raises ValueError when the file exists but lacks its
    extractor's FID: a half-understood record must not become a silent blank.
    """
    if path is None or not Path(path).exists():
        return None
    record = json.loads(Path(path).read_text())
    extractor = record.get("extractor", INCEPTION)
    s = extractor_suffix(extractor)
    if f"fid{s}" not in record:
        raise ValueError(f"{path}: no fid{s} for extractor {extractor!r}")
    out: dict[str, Any] = {col: record.get(key.format(s=s)) for col, key in METRIC_KEYS.items()}
    out.update(
        n_samples=record.get("num_samples"),
        extractor=extractor,
        guidance_scale=(record.get("sampling") or {}).get("guidance_scale"),
        comparable=bool(record.get("comparable_to_paper", False)),
        reasons=list(record.get("not_comparable_because") or []),
    )
    return out


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
    """A run's metrics.csv (rar.train.METRICS_FIELDS) as numbers sorted by step, or None if
    absent or without rows.

    The file grows by appended lines while training runs, so a last line without its newline
    is torn and dropped; a resumed run logs again the steps after its last checkpoint, so the
    last record of each step wins."""
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
    df = df.apply(pd.to_numeric, errors="coerce").dropna(subset=["step", "epoch", df.columns[-1]])
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
) -> pd.DataFrame:
    """Assemble one paper table from its rows' metrics.json files; write `csv` (and `md`).

    table: the table's name (`table2`), the Markdown title.
    rows: per row {"label", "keys": {column: value}, "run", "evaluation", "paper": {"fid",
        "is", "precision", "recall"} (any subset), "failure": failure file(s) or None}.
    metrics: per row, the path of its metrics.json (it may not exist yet).
    Columns: the key columns (in `keys` order), RESULT_COLUMNS, paper_<m> and <m>_diff (ours
    - paper) for each metric, then run, evaluation, label. Every row is kept, in order.
    """
    if len(rows) != len(metrics):
        raise ValueError(f"{table}: {len(rows)} rows but {len(metrics)} metrics files")
    key_cols = list(dict.fromkeys(k for row in rows for k in row.get("keys", {})))
    clash = set(key_cols) & set(RESULT_COLUMNS + PAPER_COLUMNS + ID_COLUMNS)
    if clash:
        raise ValueError(f"{table}: key columns {sorted(clash)} clash with result columns")

    records, reasons = [], []
    for row, path in zip(rows, metrics, strict=True):
        paper = dict(row.get("paper") or {})
        unknown = set(paper) - set(PAPER_METRICS)
        if unknown:
            raise ValueError(f"{table}, row {row['label']!r}: unknown paper metrics {unknown}")
        m = read_metrics(path)
        rec = {k: row.get("keys", {}).get(k) for k in key_cols}
        rec.update({c: (m or {}).get(c) for c in RESULT_COLUMNS[:-1]})
        rec.update(_guidance_cells(m, row.get("sweep")))
        rec["status"] = _status(m, read_failure(row.get("failure")))
        for name in PAPER_METRICS:
            ours, theirs = rec[name], paper.get(name)
            rec[f"paper_{name}"] = theirs
            # Rounded so that CSV diffs read 0.03, not 0.030000000000000027.
            both = ours is not None and theirs is not None
            rec[f"{name}_diff"] = round(ours - theirs, 6) if both else None
        rec.update(run=row.get("run"), evaluation=row.get("evaluation"), label=row["label"])
        records.append(rec)
        reasons.append((m or {}).get("reasons", []))

    df = pd.DataFrame(records, columns=key_cols + RESULT_COLUMNS + PAPER_COLUMNS + ID_COLUMNS)
    # Nullable dtypes: a missing row must not turn the sample counts into floats (5000.0).
    df["n_samples"] = df["n_samples"].astype("Int64")
    df["comparable"] = df["comparable"].astype("boolean")
    for col in [*METRIC_KEYS, *PAPER_COLUMNS]:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    atomic_write_text(csv, df.to_csv(index=False))
    if md is not None:
        atomic_write_text(md, table_markdown(df, table=table, key_cols=key_cols, reasons=reasons))
    n_ok = int(df["status"].str.startswith("ok").sum())
    print(f"{table}: {len(df)} rows, {n_ok} with metrics -> {csv}", flush=True)
    return df


def _extractors(df: pd.DataFrame) -> list[str]:
    return sorted(df["extractor"].dropna().unique()) if "extractor" in df else []


def metric_label(metric: str, extractors: Iterable[str] = (), short: bool = False) -> str:
    """`FID`, or `FID (efficientnet-lite0 features, not Inception)` when the numbers come from
    another network: a plot or header must never pass a demo FID off as an Inception FID.
    short: `FID (efficientnet-lite0)`, for table headers under a caption that says the rest."""
    name = METRIC_NAMES.get(metric, metric)
    others = ", ".join(e for e in extractors if e != INCEPTION)
    if not others:
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


def _caption(df: pd.DataFrame, reasons: list[list[str]]) -> list[str]:
    """Caption paragraphs: extractor, sample counts, comparability, holes, paper columns."""
    extractors = _extractors(df)
    counts = sorted({int(n) for n in df["n_samples"].dropna()})
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


def table_markdown(
    df: pd.DataFrame, *, table: str, key_cols: list[str], reasons: list[list[str]]
) -> str:
    """The Markdown page of one table: title, caption, pipe table (every row, with status)."""
    ext = _extractors(df)
    arrows = {m: ("↓" if m in LOWER_IS_BETTER else "↑") for m in PAPER_METRICS}
    # (header, column, decimals, signed); paper/diff columns only where some value is known.
    cols: list[tuple[str, str, int | None, bool]] = [(k, k, None, False) for k in key_cols]
    if not key_cols:
        cols.append(("row", "label", None, False))
    for m in PAPER_METRICS:
        cols.append((metric_label(m, ext, short=True) + arrows[m], m, DECIMALS[m], False))
        if df[f"paper_{m}"].notna().any():
            cols.append((f"paper {METRIC_NAMES[m]}", f"paper_{m}", DECIMALS[m], False))
            cols.append((f"Δ{METRIC_NAMES[m]}", f"{m}_diff", DECIMALS[m], True))
    if df["guidance_scale"].notna().any():
        cols.append(("guidance", "guidance_scale", None, False))
    if df["guidance_sweep"].notna().any():
        cols.append(("sweep: FID by scale", "guidance_sweep", None, False))
    cols += [("samples", "n_samples", None, False), ("status", "status", None, False)]

    lines = [f"# {table}", "", *(p + "\n" for p in _caption(df, reasons))]
    lines.append("| " + " | ".join(h for h, *_ in cols) + " |")
    # Numbers right-aligned, names and status left.
    lines.append(
        "|"
        + "|".join("---:" if d is not None or c == "n_samples" else "---" for _, c, d, _ in cols)
        + "|"
    )
    for _, r in df.iterrows():
        cells = [_fmt(r[c], d, s) for _, c, d, s in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ##########################################################################################
# Plot helpers
# ##########################################################################################


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, out: PathLike) -> Path:
    """Write `fig` as a PNG atomically (a killed job leaves no half-written image)."""
    out = Path(out)
    with atomic_open(out, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)
    print(f"wrote {out}", flush=True)
    return out


def _check_metric(metric: str) -> None:
    if metric not in PAPER_METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(PAPER_METRICS)}")


def _short_status(status: Any) -> str:
    """`failed: out of memory` -> `failed` (a cell or bar has no room for the reason)."""
    return str(status).split(":")[0].split(" (")[0] if isinstance(status, str) else "missing"


# ##########################################################################################
# Table plots
# ##########################################################################################


def anneal_grid(df: pd.DataFrame, column: str = "fid") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2's rows -> (values, status) grids, index anneal_start, columns anneal_end
    (ascending). values: `column` (a metric, or paper_<metric>), NaN where unknown; status:
    the row's status, None where no row of the table has that (start, end) (start > end)."""
    if column not in df:
        raise ValueError(f"no column {column!r}; columns: {', '.join(df.columns)}")
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


def plot_anneal_heatmap(*, csv: PathLike, out: PathLike, metric: str = "fid") -> Path:
    """RAR Table 2 as a heatmap: `metric` over (anneal_start, anneal_end), values annotated
    (with the paper's below where known), the best cell boxed, rows without metrics hatched."""
    from matplotlib.patches import Rectangle

    _check_metric(metric)
    df = pd.read_csv(csv)
    values, status = anneal_grid(df, metric)
    paper = anneal_grid(df, f"paper_{metric}")[0] if f"paper_{metric}" in df else None
    label = metric_label(metric, _extractors(df))
    fig = _figure(1.1 * len(values.columns) + 2.5, 0.8 * len(values.index) + 1.8)
    ax = fig.add_subplot()
    cmap = "viridis_r" if metric in LOWER_IS_BETTER else "viridis"  # bright = better
    arr = values.to_numpy(dtype=float)
    im = ax.imshow(np.ma.masked_invalid(arr), cmap=cmap, aspect="auto")
    fig.colorbar(im, ax=ax, label=axis_label(metric, _extractors(df)))
    finite = np.isfinite(arr)
    best = None
    if finite.any():
        flat = np.where(finite, arr, np.inf if metric in LOWER_IS_BETTER else -np.inf)
        best = np.unravel_index(
            flat.argmin() if metric in LOWER_IS_BETTER else flat.argmax(), arr.shape
        )
    lo, hi = (np.nanmin(arr), np.nanmax(arr)) if finite.any() else (0.0, 1.0)
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
        text = f"{arr[i, j]:.{DECIMALS[metric]}f}"
        if paper is not None and np.isfinite(paper.iat[i, j]):
            text += f"\n(paper {paper.iat[i, j]:.{DECIMALS[metric]}f})"
        # Dark text on the bright end of the ramp, white on the dark end.
        t = (arr[i, j] - lo) / (hi - lo) if hi > lo else 0.5
        bright = t < 0.5 if metric in LOWER_IS_BETTER else t > 0.5
        ax.text(
            j, i, text, ha="center", va="center", fontsize=8, color="black" if bright else "white"
        )
    if best is not None:
        ax.add_patch(
            Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5)
        )
    ax.set_xticks(range(len(values.columns)), [f"{c:g}" for c in values.columns])
    ax.set_yticks(range(len(values.index)), [f"{c:g}" for c in values.index])
    ax.set_xlabel("anneal end (epoch)")
    ax.set_ylabel("anneal start (epoch)")
    # Two lines: the extractor's name makes the label long, and one line gets clipped.
    title = f"{label}\nby randomness-annealing schedule (RAR Table 2; best boxed)"
    ax.set_title(title, fontsize=10)
    return _save(fig, out)


def plot_metric_bars(*, csv: PathLike, out: PathLike, key: str, metric: str = "fid") -> Path:
    """One bar of `metric` per table row, labelled by column `key` (Table 3: target_order,
    Table 4: model); the paper's values as red diamonds; rows without metrics marked."""
    _check_metric(metric)
    df = pd.read_csv(csv)
    if key not in df:
        raise ValueError(f"{csv}: no column {key!r}; columns: {', '.join(df.columns)}")
    ext = _extractors(df)
    label = metric_label(metric, ext)
    x = np.arange(len(df))
    ours = df[metric].to_numpy(dtype=float)
    theirs = df.get(f"paper_{metric}", pd.Series(np.nan, index=df.index)).to_numpy(dtype=float)
    fig = _figure(max(4.0, 1.0 * len(df) + 1.5), 4.0)
    ax = fig.add_subplot()
    ax.bar(x, np.nan_to_num(ours), color="tab:blue", label="ours")
    for i, v in enumerate(ours):
        if np.isfinite(v):
            ax.annotate(
                f"{v:.{DECIMALS[metric]}f}",
                (i, v),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        else:
            ax.text(
                i,
                0,
                _short_status(df["status"].iat[i]),
                rotation=90,
                ha="center",
                va="bottom",
                fontsize=9,
                color="0.4",
            )
    if np.isfinite(theirs).any():
        paper = "paper" if set(ext) <= {INCEPTION} else "paper (Inception)"
        ax.scatter(x, theirs, marker="D", color="tab:red", zorder=3, label=paper)
    ax.set_xticks(
        x,
        [str(v) for v in df[key]],
        rotation=30 if len(df) > 4 else 0,
        ha="right" if len(df) > 4 else "center",
    )
    ax.set_xlabel(key)
    ax.set_ylabel(axis_label(metric, ext))
    ax.set_title(f"{label} by {key}", fontsize=10)
    ax.margins(y=0.15)
    ax.legend(loc="best", fontsize=8)
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


def plot_loss_curves(*, runs: list[dict], out: PathLike, title: str | None = None) -> Path:
    """Training loss (top) and the randomness r (bottom) against epoch, one line per run.

    runs: [{"label", "metrics_csv"}]; runs whose file is absent or empty are named in the
    title instead of drawn."""
    fig = _figure(8.0, 6.0)
    ax_loss, ax_r = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    missing = []
    for i, run in enumerate(runs):
        df = read_train_log(run["metrics_csv"])
        if df is None:
            missing.append(run["label"])
            continue
        color = f"C{i % 10}"
        # Per-step loss is noisy: draw it faint, and a running mean over ~2% of the points.
        window = max(1, len(df) // 50)
        ax_loss.plot(df["epoch"], df["loss"], color=color, alpha=0.25, lw=0.8)
        smooth = df["loss"].rolling(window, min_periods=1).mean()
        ax_loss.plot(df["epoch"], smooth, color=color, lw=1.5, label=run["label"])
        ax_r.plot(df["epoch"], df["ratio"], color=color, lw=1.5)
    ax_loss.set_ylabel("training loss (cross-entropy)")
    ax_r.set_ylabel("randomness r")
    ax_r.set_xlabel("epoch")
    ax_r.set_ylim(-0.05, 1.05)
    if len(runs) > len(missing):
        ax_loss.legend(fontsize=8, loc="upper right")
    else:
        ax_loss.text(
            0.5,
            0.5,
            "no training logs yet",
            transform=ax_loss.transAxes,
            ha="center",
            va="center",
            color="0.4",
        )
    text = title or "Training loss and permutation probability r (RAR §3.2)"
    if missing:
        text += f"\nmissing: {', '.join(missing)}"
    ax_loss.set_title(text, fontsize=10)
    return _save(fig, out)


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


def _grid_image(png: PathLike, max_rows: int | None) -> np.ndarray | None:
    """A grid.png as an array, cut to its first `max_rows` rows of samples. The sample height
    comes from samples.json beside it (`grid_classes`: one grid row per class, rar.sample);
    without that file the grid is shown whole."""
    from PIL import Image

    png = Path(png)
    if not png.exists():
        return None
    img = np.asarray(Image.open(png).convert("RGB"))
    info = png.with_name("samples.json")
    if max_rows is not None and info.exists():
        n_rows = len(json.loads(info.read_text()).get("grid_classes") or []) or 1
        img = img[: img.shape[0] // n_rows * min(max_rows, n_rows)]
    return img


def plot_sample_grids(
    *, grids: list[dict], out: PathLike, max_rows: int | None = None, width: float = 10.0
) -> Path:
    """The sample grids stacked top to bottom, each under its label; a missing grid is a
    blank panel that says so. grids: [{"label", "png"}]; max_rows: sample rows kept per grid
    (see `_grid_image`); width: figure width in inches (shrunk so the page stays < 40 in)."""
    images = [_grid_image(g["png"], max_rows) for g in grids]
    found = [im for im in images if im is not None]
    # A missing panel takes the shape of the others so that the page keeps its rhythm.
    blank_aspect = np.median([im.shape[0] / im.shape[1] for im in found]) if found else 0.25
    aspects = [im.shape[0] / im.shape[1] if im is not None else blank_aspect for im in images]
    panel_w = min(width, 40.0 / max(1e-6, sum(aspects) + 0.3 * len(grids)))
    heights = [panel_w * a + 0.3 for a in aspects]  # + room for the label
    fig = _figure(panel_w, max(1.0, sum(heights)))
    axes = fig.subplots(max(1, len(grids)), 1, squeeze=False, height_ratios=heights or None)
    for ax, g, im, a in zip(axes[: len(grids), 0], grids, images, aspects, strict=True):
        if im is None:
            ax.imshow(np.full((100, round(100 / a), 3), 235, dtype=np.uint8))
            ax.text(
                0.5,
                0.5,
                f"missing: {g['png']}",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="0.3",
                fontsize=9,
            )
        else:
            ax.imshow(im, interpolation="antialiased")
        ax.set_title(g["label"], loc="left", fontsize=10)
        ax.set_axis_off()
    if not grids:
        axes[0, 0].set_axis_off()
        axes[0, 0].text(0.5, 0.5, "no sample grids", ha="center", va="center")
    return _save(fig, out)


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
