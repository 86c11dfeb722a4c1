"""A table's rows, its best row, and which rows differ from it beyond the error bars.

A table holds its rows proper and, under them, its reference rows (real images, the floor; an
untrained model, the ceiling). Only rows proper compete for the best; every row with a 95%
interval is compared with the best row's: where the two do not overlap, the difference is
beyond the error bars (the BEYOND mark), elsewhere the two cannot be told apart.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from rar.experiments import CEILING, FLOOR
from rar.report.columns import INTERVALS, LOWER_IS_BETTER


def table_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of a table proper, without its reference rows (any row of a CSV written
    before reference rows existed)."""
    return df[df["kind"] == "row"] if "kind" in df else df


def reference_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The reference rows of a table (none in a CSV written before they existed)."""
    return df[df["kind"] == "reference"] if "kind" in df else df.iloc[:0]


def best_index(df: pd.DataFrame, metric: str = "fid") -> Any:
    """The index of the table row (not a reference row) with the best finite `metric`
    (lowest for FID and NLL), or None when no row has one."""
    values = table_rows(df)[metric] if metric in df else pd.Series(dtype=float)
    values = values[np.isfinite(values.astype(float))]
    if values.empty:
        return None
    return values.idxmin() if metric in LOWER_IS_BETTER else values.idxmax()


def interval(df: pd.DataFrame, i: Any, metric: str) -> tuple[float, float] | None:
    """Row i's 95% interval of `metric` (a metric of INTERVALS), or None when unknown."""
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
    if best is None or interval(df, best, metric) is None:
        return out
    b_lo, b_hi = interval(df, best, metric)
    for i in df.index:
        ci = interval(df, i, metric)
        if ci is not None:
            out[i] = bool(ci[0] > b_hi or ci[1] < b_lo)
    return out


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
