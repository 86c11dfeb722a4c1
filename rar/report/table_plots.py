"""A table's numbers as plots: RAR Table 2 as heatmaps over (anneal start, anneal end), and
Tables 3 and 4 as points with their intervals. Each reads the table's CSV (`make_table`), one
panel per metric, the best row shown and the rows beyond its error bars marked as in the
Markdown, rows without metrics drawn as such.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from rar.report.columns import (
    BEYOND,
    DECIMALS,
    INCEPTION,
    INTERVALS,
    LOWER_IS_BETTER,
    PathLike,
    axis_label,
    extractors_of,
    interval_decimals,
    known,
    metric_label,
)
from rar.report.figures import (
    RANDOM_ORDER,
    chars_across,
    check_metric,
    drop_unused,
    figure,
    grid_shape,
    panel_metrics,
    reference_note,
    save_png,
    short_status,
    wrap_to,
)
from rar.report.intervals import best_index, beyond_best, table_rows

# ##########################################################################################
# Table 2: heatmaps over the annealing grid
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
    panels = list(metrics) if metrics else panel_metrics(df, metric)
    for m in panels:
        check_metric(m)
    values = anneal_grid(df, panels[0])[0]
    ext = extractors_of(df)
    nrows, ncols = grid_shape(len(panels), max_cols=3)  # 3 metrics: one line, no empty cell
    width = 1.25 * len(values.columns) + 2.6
    fig = figure(width * ncols, (0.95 * len(values.index) + 2.0) * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, m in zip(axes, panels, strict=False):
        _heatmap_panel(fig, ax, df, m, ext)
    drop_unused(fig, axes, len(panels))
    title = (
        "By randomness-annealing schedule (RAR Table 2): best cell boxed; [95% interval]; "
        f"{BEYOND} = interval does not overlap the best's"
    )
    fig.suptitle(wrap_to(fig, title, 10), fontsize=10)
    return save_png(fig, out)


def _heatmap_panel(fig, ax, df: pd.DataFrame, metric: str, ext: list[str]) -> None:
    """One metric's heatmap: coloured cells (bright = better), each annotated, the best boxed."""
    from matplotlib.patches import Rectangle

    values, status = anneal_grid(df, metric)
    lower = metric in LOWER_IS_BETTER
    arr = values.to_numpy(dtype=float)
    im = ax.imshow(
        np.ma.masked_invalid(arr), cmap="viridis_r" if lower else "viridis", aspect="auto"
    )
    fig.colorbar(im, ax=ax, label=axis_label(metric, ext), shrink=0.9)
    finite = np.isfinite(arr)
    best = None
    if finite.any():
        flat = np.where(finite, arr, np.inf if lower else -np.inf)
        best = np.unravel_index(flat.argmin() if lower else flat.argmax(), arr.shape)
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
            ax.text(j, i, short_status(st), ha="center", va="center", fontsize=8, color="0.3")
    _annotate_cells(ax, df, metric, values, bold=best)
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
    note = reference_note(df, metric)
    if note:
        title += "\n" + textwrap.fill(note, 48)
    ax.set_title(title, fontsize=9)


def _annotate_cells(ax, df: pd.DataFrame, metric: str, values: pd.DataFrame, bold) -> None:
    """Each known cell's value (BEYOND where its interval misses the best's; bold at `bold`),
    with its interval, the paper's value and a random sampling order (Table 2's random-only
    row) in small print under it."""
    paper = anneal_grid(df, f"paper_{metric}")[0] if f"paper_{metric}" in df else None
    rows = table_rows(df)
    beyond = beyond_best(rows.reset_index(drop=True), metric) if metric in INTERVALS else None
    where = {(r["anneal_start"], r["anneal_end"]): k for k, (_, r) in enumerate(rows.iterrows())}
    lower = metric in LOWER_IS_BETTER
    arr = values.to_numpy(dtype=float)
    finite = np.isfinite(arr)
    lo, hi = (np.nanmin(arr), np.nanmax(arr)) if finite.any() else (0.0, 1.0)
    d = DECIMALS[metric]
    lo_col, hi_col = INTERVALS.get(metric, (None, None))
    for i, j in np.ndindex(arr.shape):
        if not finite[i, j]:
            continue
        k = where[(values.index[i], values.columns[j])]
        r = rows.iloc[k]
        has_ci = lo_col and known(r.get(lo_col)) and known(r.get(hi_col))
        dv = interval_decimals(metric, r[lo_col], r[hi_col]) if has_ci else d
        text = f"{arr[i, j]:.{dv}f}"
        if beyond is not None and beyond.iat[k] is True:
            text += BEYOND
        small = []
        if has_ci:
            small.append(f"[{r[lo_col]:.{dv}f}, {r[hi_col]:.{dv}f}]")
        if paper is not None and np.isfinite(paper.iat[i, j]):
            small.append(f"paper {paper.iat[i, j]:.{d}f}")
        if r.get("sampling_order") == "random":
            small.append(RANDOM_ORDER)
        # Dark text on the bright end of the ramp, white on the dark end.
        t = (arr[i, j] - lo) / (hi - lo) if hi > lo else 0.5
        bright = t < 0.5 if lower else t > 0.5
        color = "black" if bright else "white"
        weight = "bold" if bold == (i, j) else "normal"
        y = i - (0.12 if small else 0)
        ax.text(j, y, text, ha="center", va="center", fontsize=9, color=color, fontweight=weight)
        if small:
            ax.text(
                j, i + 0.22, "\n".join(small), ha="center", va="center", fontsize=6.5, color=color
            )


# ##########################################################################################
# Tables 3 and 4: points with their intervals
# ##########################################################################################


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
    df = pd.read_csv(csv)
    if key not in df:
        raise ValueError(f"{csv}: no column {key!r}; columns: {', '.join(df.columns)}")
    panels = list(metrics) if metrics else panel_metrics(df, metric)
    for m in panels:
        check_metric(m)
    ext = extractors_of(df)
    rows = table_rows(df).reset_index(drop=True)
    x = np.arange(len(rows))
    fig = figure(max(5.0, 0.9 * len(rows) + 2.0), 3.0 * len(panels) + 0.6)
    axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True)[:, 0]
    for ax, m in zip(axes, panels, strict=True):
        _points_panel(ax, df, rows, m, ext)
    labels = [str(v) for v in rows[key]]
    long = len(rows) > 4 or max((len(s) for s in labels), default=0) > 10
    axes[-1].set_xticks(x, labels, rotation=30 if long else 0, ha="right" if long else "center")
    axes[-1].set_xlabel(key)
    title = (
        f"By {key}: points with 95% intervals; green = best row; grey with {BEYOND} = interval "
        "beyond the best's"
    )
    fig.suptitle(wrap_to(fig, title, 9), fontsize=9)
    return save_png(fig, out)


def _points_panel(ax, df: pd.DataFrame, rows: pd.DataFrame, m: str, ext: list[str]) -> None:
    """One metric's panel: the best row's interval as a band, a point per row (a note where
    it has none), the paper's values; the reference rows' values in the title."""
    lo_col, hi_col = INTERVALS.get(m, (None, None))
    has_ci = lo_col in rows and rows[lo_col].notna().any()
    lo = rows[lo_col].to_numpy(dtype=float) if has_ci else np.full(len(rows), np.nan)
    hi = rows[hi_col].to_numpy(dtype=float) if has_ci else np.full(len(rows), np.nan)
    best = best_index(rows, m)
    if best is not None and np.isfinite(lo[best]):
        ax.axhspan(
            lo[best], hi[best], color="tab:green", alpha=0.15, lw=0, label="best row's 95% interval"
        )
    beyond = beyond_best(rows, m) if m in INTERVALS else pd.Series(pd.NA, index=rows.index)
    for i, v in enumerate(rows[m].to_numpy(dtype=float)):
        _point(ax, i, v, (lo[i], hi[i]), rows["status"].iat[i], m, best, beyond.iat[i] is True)
    theirs = rows.get(f"paper_{m}", pd.Series(np.nan, index=rows.index)).to_numpy(float)
    if np.isfinite(theirs).any():
        paper = "paper" if set(ext) <= {INCEPTION} else "paper (Inception)"
        ax.scatter(np.arange(len(rows)), theirs, marker="D", color="tab:red", zorder=3, label=paper)
    ax.set_ylabel(textwrap.fill(axis_label(m, ext), 30), fontsize=9)
    title = metric_label(m, ext)
    note = reference_note(df, m)
    if note:  # wrapped to the panel, which is narrower than the figure by the axis labels
        title += "\n" + textwrap.fill(f"reference rows: {note}", int(chars_across(ax) * 0.8))
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.margins(x=0.15, y=0.15)  # room right of the last point for its value
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=7)


def _point(ax, i: int, v: float, ci, status, m: str, best, beyond: bool) -> None:
    """Row i's point with its interval (green if best, grey if beyond the best's), or, with
    no value, its short status written up the panel."""
    from matplotlib.transforms import blended_transform_factory

    if not np.isfinite(v):
        ax.text(
            i,
            0.03,
            short_status(status),
            rotation=90,
            ha="center",
            va="bottom",
            fontsize=8,
            color="0.4",
            transform=blended_transform_factory(ax.transData, ax.transAxes),
        )
        return
    color = "tab:green" if i == best else ("0.45" if beyond else "tab:blue")
    err = None
    if np.isfinite(ci[0]) and np.isfinite(ci[1]):
        err = [[max(0.0, v - ci[0])], [max(0.0, ci[1] - v)]]
    ax.errorbar([i], [v], yerr=err, fmt="o", color=color, ms=6, capsize=4, lw=1.5)
    d = interval_decimals(m, *ci) if err is not None else DECIMALS[m]
    label = f"{v:.{d}f}" + (BEYOND if beyond else "")
    ax.annotate(label, (i, v), xytext=(7, 0), textcoords="offset points", va="center", fontsize=8)
