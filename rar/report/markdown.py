"""The Markdown page of one table: title, caption, one pipe-table column per metric the
table has (values with their intervals, the best bold, the rows beyond it marked), and for an
annealing table the verdict sentence. Deterministic: the same table gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from rar.report.captions import anneal_verdict, caption
from rar.report.columns import (
    BEYOND,
    DECIMALS,
    INTERVALS,
    LOWER_IS_BETTER,
    METRIC_NAMES,
    MISSING,
    PAPER_METRICS,
    PLOT_METRICS,
    extractors_of,
    fmt_cell,
    interval_decimals,
    is_true,
    known,
    metric_label,
)
from rar.report.intervals import best_index, beyond_best, interval, reference_rows, table_rows

# A column of the pipe table: (header, cell of row i, right-aligned).
Column = tuple[str, Callable[[Any], str], bool]


def table_markdown(
    df: pd.DataFrame, *, table: str, key_cols: list[str], reasons: list[list[str]]
) -> str:
    """The Markdown page of one table: title, caption, pipe table (every row, with its status
    where it differs from the rest's; reference rows last, in italics), and for an annealing
    table the verdict sentence."""
    cols = _columns(df, key_cols)
    lines = [f"# {table}", "", *(p + "\n" for p in caption(df, reasons))]
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


def _columns(df: pd.DataFrame, key_cols: list[str]) -> list[Column]:
    """The table's columns: its keys, each metric it has (and the paper's value beside it),
    sampling order and guidance where they vary or are known, samples and status where they
    vary. What every row shares is said once, by the caption: the extractor (not in each
    metric's header, when there is one), the sample count, the status (`_status_cells`)."""
    ext = extractors_of(df)
    if len(ext) == 1:  # the caption names it; a header names it only to tell rows apart
        ext = []
    arrows = {m: ("↓" if m in LOWER_IS_BETTER else "↑") for m in PLOT_METRICS}
    best = best_index(df)
    cols: list[Column] = []
    label_col = key_cols[0] if key_cols else None
    for k in key_cols:
        cols.append((k, lambda i, k=k: _key_cell(df, i, k, k == label_col), False))
    if not key_cols:
        cols.append(("row", lambda i: fmt_cell(df.at[i, "label"]), False))

    def plain(col, d=None, sign=False):
        return lambda i: fmt_cell(df.at[i, col], d, sign)

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
    if df["n_samples"].nunique() > 1:  # else the caption's "<n> samples per evaluation"
        cols.append(("samples", plain("n_samples"), True))
    status = _status_cells(df)
    if status is not None:
        cols.append(("status", lambda i: status[i], False))
    return cols


def _status_cells(df: pd.DataFrame) -> pd.Series | None:
    """Per row, its status where it differs from the rest's: the status most rows with
    metrics share (`ok (efficientnet-lite0, 160 samples: not comparable to the paper)`) reads
    `ok`, its detail left to the caption's paragraphs (extractor, sample count, not
    comparable); any other reads in full (`failed: <reason>`, `missing`, another `ok (...)`).
    None when every row shares one status: the table needs no status column."""
    statuses = df["status"].fillna("missing").astype(str)
    if statuses.nunique() < 2:
        return None
    ok = statuses[statuses.str.startswith("ok")]
    common = ok.value_counts(sort=False).idxmax() if len(ok) else None  # ties: the first
    # A plain `ok` among rows that are not comparable must not read like them.
    plain_ok = "ok (comparable to the paper)" if common not in (None, "ok") else "ok"
    cells = statuses.map(lambda st: "ok" if st == common else plain_ok if st == "ok" else st)
    return cells.map(fmt_cell)


def _metric_cell(df: pd.DataFrame, i: Any, metric: str, best: Any) -> str:
    """`12.3 [11.1, 13.6]`: the value and its interval, to `interval_decimals`; bold for the
    best row (when there is more than one row to be best of), BEYOND when the interval misses
    the best row's."""
    value = df.at[i, metric]
    if not known(value):
        return MISSING
    ci = interval(df, i, metric) if metric in INTERVALS else None
    d = DECIMALS[metric] if ci is None else interval_decimals(metric, *ci)
    cell = f"{float(value):.{d}f}"
    if best is not None and i == best and table_rows(df)[metric].notna().sum() > 1:
        cell = f"**{cell}**"
    if ci is not None:
        cell += f" [{ci[0]:.{d}f}, {ci[1]:.{d}f}]"
    if metric in INTERVALS and df.at[i, "kind"] == "row":  # references are not candidates
        beyond = df.at[i, "beyond_best"] if metric == "fid" else beyond_best(df, metric)[i]
        if is_true(beyond):
            cell += f" {BEYOND}"
    return cell


def _order_varies(df: pd.DataFrame, key_cols: list[str]) -> bool:
    """Whether the rows sample in different orders that no key column already shows (Table
    3's target order is its sampling order; Table 2's random-only row samples randomly)."""
    known_orders = df[df["sampling_order"].notna()]
    if known_orders["sampling_order"].nunique() < 2:
        return False
    orders = known_orders["sampling_order"].astype(str).tolist()
    return not any(known_orders[k].astype(str).tolist() == orders for k in key_cols)


def _key_cell(df: pd.DataFrame, i: Any, key: str, first: bool) -> str:
    """A key cell; a reference row shows its label, in italics, in the first key column."""
    if df.at[i, "kind"] == "reference":
        return f"*{fmt_cell(df.at[i, 'label'])}*" if first else ""
    return fmt_cell(df.at[i, key])
