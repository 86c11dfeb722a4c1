"""Curves over training and over settings: each run's training loss with its randomness r
(small multiples), FID of intermediate checkpoints against their epoch, and FID against the
guidance scale of each row's sweep.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pandas as pd

from rar.experiments.records import VALIDATION_CSV
from rar.report.columns import PathLike, axis_label, metric_label
from rar.report.figures import (
    check_metric,
    drop_unused,
    empty_note,
    figure,
    grid_shape,
    save_png,
)
from rar.report.read import read_metrics, read_train_log

LOSS, OTHERS, RATIO, HELD_OUT = "tab:blue", "0.82", "tab:orange", "tab:purple"  # line colours

# ##########################################################################################
# Training loss
# ##########################################################################################


def plot_loss_curves(
    *, runs: list[dict], out: PathLike, title: str | None = None, ncols: int = 5
) -> Path:
    """Small multiples, one panel per run (same axes everywhere): its training loss (faint:
    per logged step; solid: a running mean over ~2% of the points), every other run's running
    mean in light grey behind it for comparison, its held-out NLL where rar.training.loop logged one
    (points), and the randomness r on the right axis. The legend sits under the panels.

    runs: [{"label", "metrics_csv"}, optionally "validation_csv"]; a run whose file is absent
    or empty gets a panel that says so."""
    logs = [read_train_log(run["metrics_csv"]) for run in runs]
    smooth = {}
    for k, df in enumerate(logs):
        if df is not None:
            window = max(1, len(df) // 50)
            smooth[k] = (df["epoch"], df["loss"].rolling(window, min_periods=1).mean())
    n = max(1, len(runs))
    nrows = math.ceil(n / ncols)  # as few rows as `ncols` allows, each as full as it can be:
    ncols = math.ceil(n / nrows)  # 6 panels in 2 rows of 3, not a row of 5 and a row of 1
    fig = figure(2.9 * ncols + 0.8, 2.3 * nrows + 1.2)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    _fit_loss_axis(axes[0, 0], smooth)
    for k in range(nrows * ncols):
        ax = axes.flat[k]
        if k >= len(runs):
            ax.set_axis_off()
            continue
        ax.set_title(textwrap.fill(runs[k]["label"], 34), fontsize=8)
        ax.grid(alpha=0.25)
        if logs[k] is None:
            empty_note(ax, "no training log yet", fontsize=8)
            continue
        _loss_panel(ax, runs[k], logs[k], k, smooth)
        if "ratio" in logs[k]:
            right = k % ncols == ncols - 1 or k == len(runs) - 1
            _ratio_axis(ax, logs[k], labelled=right)
        ax.tick_params(labelsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("loss (nats/token)", fontsize=8)
    for ax in axes[-1, :]:
        ax.set_xlabel("epoch", fontsize=8)
    _loss_legend(fig, runs, logs)
    text = title or "Training loss and permutation probability r (RAR §3.2)"
    missing = [run["label"] for run, df in zip(runs, logs, strict=True) if df is None]
    if missing:
        text += f"\nmissing: {', '.join(missing)}"
    fig.suptitle(text, fontsize=10)
    return save_png(fig, out, palette=256)


def _fit_loss_axis(ax, smooth: dict) -> None:
    """The first steps' loss (~log of the codebook size) would squash the rest: the (shared)
    axis shows the running means after the first 5% of training."""
    late = [s[(e >= 0.05 * e.max())] for e, s in smooth.values()]
    late = [s for s in late if len(s)]
    if late:
        lo = min(float(s.min()) for s in late)
        hi = max(float(s.max()) for s in late)
        pad = 0.08 * (hi - lo) if hi > lo else 0.1
        ax.set_ylim(lo - pad, hi + pad)


def _loss_panel(ax, run: dict, df: pd.DataFrame, k: int, smooth: dict) -> None:
    """Run k's loss, faint and smoothed, over the other runs' in grey; its held-out NLL."""
    for j, (ep, sm) in smooth.items():
        if j != k:
            ax.plot(ep, sm, color=OTHERS, lw=0.8, zorder=1)
    ax.plot(df["epoch"], df["loss"], color=LOSS, alpha=0.2, lw=0.6, zorder=2)
    ax.plot(*smooth[k], color=LOSS, lw=1.6, zorder=3)
    held = _held_out_log(run)
    if held is not None:
        ax.plot(held["epoch"], held["nll"], "o", color=HELD_OUT, ms=3.5, zorder=4)


def _ratio_axis(ax, df: pd.DataFrame, *, labelled: bool) -> None:
    """The randomness r on a right axis, named only on the last panel of a line."""
    twin = ax.twinx()
    twin.plot(df["epoch"], df["ratio"], color=RATIO, lw=1.0, ls="--")
    twin.set_ylim(-0.05, 1.05)
    if labelled:
        twin.set_ylabel("r", color=RATIO)
    else:
        twin.set_yticklabels([])
    twin.tick_params(axis="y", colors=RATIO, labelsize=7)


def _loss_legend(fig, runs: list[dict], logs: list[pd.DataFrame | None]) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=LOSS, lw=1.6, label="this run's training loss (running mean)"),
        Line2D([], [], color=OTHERS, lw=0.8, label="the other runs (running mean)"),
        Line2D([], [], color=RATIO, lw=1.0, ls="--", label="randomness r (right axis)"),
    ]
    if any(
        _held_out_log(run) is not None for run, df in zip(runs, logs, strict=True) if df is not None
    ):
        handles.append(
            Line2D([], [], color=HELD_OUT, marker="o", ls="", ms=3.5, label="held-out NLL")
        )
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)


def _held_out_log(run: dict) -> pd.DataFrame | None:
    """A run's held-out NLL log (rar.training.loop's validation.csv beside metrics.csv, or the run's
    `validation_csv`), or None."""
    path = run.get("validation_csv") or Path(run["metrics_csv"]).with_name(VALIDATION_CSV)
    df = read_train_log(path)
    if df is None:
        return None
    column = "val_loss" if "val_loss" in df else "val_nll"  # the NLL in the run's own order
    if column not in df or df[column].isna().all():
        return None
    return df[["epoch", column]].rename(columns={column: "nll"}).dropna()


# ##########################################################################################
# FID over training, FID over the guidance scale
# ##########################################################################################


def plot_fid_vs_epoch(*, points: list[dict], out: PathLike, metric: str = "fid") -> Path:
    """`metric` (default FID) of checkpoints against their epoch, one line per label.

    points: [{"label", "epoch", "metrics"}]; points without metrics.json are skipped and
    counted in the title."""
    check_metric(metric)
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
    fig = figure(7.0, 4.5)
    ax = fig.add_subplot()
    drawn = 0
    for name, xy in series.items():
        if xy:
            ep, val = zip(*sorted(xy), strict=True)
            ax.plot(ep, val, marker="o", label=name)
            drawn += 1
    if drawn:  # beside the axes, clear of the lines
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize=8)
    else:
        empty_note(ax, "no metrics yet")
    ax.set_xlabel("epoch")
    ax.set_ylabel(axis_label(metric, sorted(extractors)))
    text = f"{label} over training"
    if missing:
        text += f" ({missing} of {len(points)} points missing)"
    ax.set_title(textwrap.fill(text, 60), fontsize=10)
    ax.grid(alpha=0.3)
    return save_png(fig, out)


def plot_guidance_sweeps(*, points: list[dict], out: PathLike, per_panel: int = 8) -> Path:
    """FID against the guidance scale, one line per row, each curve's chosen scale starred.

    points: [{"label", "guidance": a sweep's guidance.json}, optionally "group"]; rows whose
    sweep has not run are counted in the title. One panel per group of rows: a point's
    "group", else its label's first field when every label has more ("anneal_start=0,
    anneal_end=2": one panel per anneal start). The rest of the label picks the line's
    colour, the same in every panel, named once in a legend under the panels. Rows without
    groups share panels of at most `per_panel`, each with its own legend under it."""
    from rar.experiments.results import read_sweep

    sweeps = [(p, read_sweep(p["guidance"])) for p in points]
    done = [(p, s) for p, s in sweeps if s is not None]
    panels = _sweep_panels([p for p, _ in done], per_panel)
    sweep_of = {id(p): s for p, s in done}
    keys = list(dict.fromkeys(key for _, rows in panels for key, _ in rows))
    shared = len(panels) > 1 and len(keys) <= 10  # one colour a key across the panels
    nrows, ncols = grid_shape(len(panels), max_cols=5)
    fig = figure(max(6.5, 3.3 * ncols + 0.8), 3.1 * nrows + 1.6)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    for k, (title, rows) in enumerate(panels):
        ax = axes.flat[k]
        for i, (key, p) in enumerate(rows):
            _sweep_line(ax, key, sweep_of[id(p)], f"C{keys.index(key) if shared else i}")
        ax.set_title(title, fontsize=9)
        if not rows:
            empty_note(ax, "no sweep yet")
        elif not shared:
            ax.legend(
                handles=[*ax.lines[::2], _star()],
                fontsize=7,
                loc="upper left",
                bbox_to_anchor=(1.02, 1.0),
            )
        ax.grid(alpha=0.3)
        ax.set_xlabel("guidance scale")
    drop_unused(fig, axes.flat, len(panels))
    for ax in axes[:, 0]:
        ax.set_ylabel("FID (sweep samples)")
    if shared:
        handles = [_key_line(f"C{i}", key) for i, key in enumerate(keys)] + [_star()]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(6, len(handles)))
    fig.suptitle(_sweep_title(done, len(sweeps)), fontsize=10)
    return save_png(fig, out)


def _sweep_panels(points: list[dict], per_panel: int) -> list[tuple[str, list[tuple[str, dict]]]]:
    """[(panel title, [(line key, point)])]: the points grouped by their "group" or their
    label's first field (the key is the rest of the label), else in runs of `per_panel`
    under one title (the key is the whole label); one empty panel when there are none."""
    fields = [p["label"].split(", ", 1) for p in points]
    by_field = points and all(len(f) == 2 for f in fields)
    groups: dict[str, list[tuple[str, dict]]] = {}
    for p, f in zip(points, fields, strict=True):
        if "group" in p:
            groups.setdefault(str(p["group"]), []).append((p["label"], p))
        elif by_field:
            groups.setdefault(f[0], []).append((f[1], p))
        else:
            groups.setdefault("", []).append((p["label"], p))
    ungrouped = groups.pop("", [])
    panels = list(groups.items())
    chunks = [ungrouped[i : i + per_panel] for i in range(0, len(ungrouped), per_panel)]
    panels += [("", chunk) for chunk in chunks]
    return panels or [("", [])]


def _sweep_line(ax, key: str, sweep: dict, color: str) -> None:
    """One row's sweep: FID at each scale, its chosen scale starred."""
    xs = [pt["guidance_scale"] for pt in sweep["points"]]
    ys = [pt["fid"] for pt in sweep["points"]]
    ax.plot(xs, ys, marker="o", ms=3, color=color, label=key)
    ax.plot([sweep["guidance_scale"]], [sweep["best"]], marker="*", ms=12, color=color, ls="")


def _key_line(color: str, key: str):
    from matplotlib.lines import Line2D

    return Line2D([], [], color=color, marker="o", ms=3, label=key)


def _star():
    from matplotlib.lines import Line2D

    return Line2D([], [], marker="*", ms=10, color="0.3", ls="", label="chosen scale")


def _sweep_title(done: list, n_sweeps: int) -> str:
    """What the panels show, the samples per point, the sweeps not yet run."""
    n_samples = {pt.get("num_samples") for _, s in done for pt in s["points"]} - {None}
    title = "FID against guidance scale\n(* = the scale the table's evaluation used"
    if n_samples:
        title += f"; {'/'.join(f'{n:,}' for n in sorted(n_samples))} samples per point"
    title += ")"
    if len(done) < n_sweeps:
        title += f"; {n_sweeps - len(done)} of {n_sweeps} sweeps missing"
    return title
