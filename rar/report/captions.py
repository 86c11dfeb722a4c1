"""The words under a table: its caption paragraphs (extractor, sample counts, intervals,
reference rows, comparability, holes), and the paper's Table 2 question answered in one
sentence (`anneal_verdict`).

Kept apart from the Markdown layout: the caption and the verdict say what the numbers mean,
and are read (and tested) as sentences, whatever page they end up on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from rar.experiments import CEILING, FLOOR, PAPER_SAMPLES, RECONSTRUCTED
from rar.report.columns import (
    BEYOND,
    INCEPTION,
    INTERVALS,
    LOWER_IS_BETTER,
    METRIC_NAMES,
    PAPER_METRICS,
    extractors_of,
    known,
)
from rar.report.intervals import best_index, gap_closed, interval, reference_rows, table_rows
from rar.report.read import sweep_size

# ##########################################################################################
# Caption
# ##########################################################################################


def caption(df: pd.DataFrame, reasons: list[list[str]]) -> list[str]:
    """Caption paragraphs: extractor, sample counts, intervals, reference rows, comparability,
    holes, paper columns. reasons: per row, why its metrics are not comparable to the paper's."""
    paras = _extractor_paragraphs(df) + _column_notes(df) + _reference_caption(df)
    paras += _comparability(df, reasons)
    holes = [
        f"{lab} ({st})"
        for lab, st in zip(df["label"], df["status"], strict=True)
        if not st.startswith("ok")
    ]
    if holes:
        paras.append(f"**No metrics for {len(holes)} of {len(df)} rows:** " + "; ".join(holes))
    sweeps = df["guidance_sweep"].dropna()
    if len(sweeps):
        two = sweeps.map(sweep_size).eq(2).any()
        paras.append(
            "guidance: the classifier-free guidance scale of the evaluation. The paper does not "
            "give its ablations' scale, so each row's scale was chosen by a sweep: FID at each "
            "scale on a smaller sample set (the sweep column; * = chosen, ! = chosen at an edge "
            "of the swept range, which should then be widened"
            + ("; a sweep of two scales chooses an edge whatever its FIDs" if two else "")
            + ")."
        )
    if df[[f"paper_{m}" for m in PAPER_METRICS]].notna().any(axis=None):  # else no such column
        paras.append(
            "paper: the RAR paper's value where known (arXiv 2411.00776); Δ = ours − paper."
        )
    return paras


def _extractor_paragraphs(df: pd.DataFrame) -> list[str]:
    """Which features and how many samples; a warning when they are not Inception's."""
    extractors = extractors_of(df)
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
    return paras


def _column_notes(df: pd.DataFrame) -> list[str]:
    """What the interval, class accuracy and val NLL columns are, where the table has them."""
    paras = []
    if df["fid_ci_low"].notna().any():
        paras.append(
            "FID [95% interval]: a bootstrap over each row's samples (rar.evaluation.scorer; the "
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
    return paras


def _comparability(df: pd.DataFrame, reasons: list[list[str]]) -> list[str]:
    """Each reason the numbers are not comparable to the paper's, with the rows it holds for."""
    by_reason: dict[str, list[str]] = {}
    for label, rs in zip(df["label"], reasons, strict=True):
        for r in rs:
            by_reason.setdefault(r, []).append(label)
    if not by_reason:
        return []
    n_bad = int((df["comparable"] == False).sum())  # noqa: E712 (nullable boolean)
    n_scored = int(df["comparable"].notna().sum())
    where = {
        r: f"all {n_scored} rows with metrics" if len(ls) == n_scored else "; ".join(ls)
        for r, ls in by_reason.items()
    }
    return [
        f"**Not comparable to the paper's numbers** ({n_bad} of {len(df)} rows):\n"
        + "\n".join(f"- {r} ({w})" for r, w in where.items())
    ]


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
            f" The best row, {row_name(df, best)}, closes {100 * closed:.0f}% of the FID gap "
            "from the ceiling to the floor"
        )
        bound = gap_closed(df, bound=RECONSTRUCTED)
        text += (
            f"; the tokenizer's reconstructions close {100 * bound:.0f}%."
            if bound is not None
            else "."
        )
    return [text]


def row_name(df: pd.DataFrame, i: Any) -> str:
    """A row as the table names it: its anneal pair `(2, 3)`, else its label."""
    if {"anneal_start", "anneal_end"} <= set(df.columns) and known(df.at[i, "anneal_start"]):
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
    ca = interval(df, a, metric) if metric in INTERVALS else None
    cb = interval(df, b, metric) if metric in INTERVALS else None
    if ca is None or cb is None:
        better = va < vb if lower_better else va > vb
        word = "better" if better else "not better"
        return f"is {word} than {name}, with no interval to judge by", False
    if (ca[1] < cb[0]) if lower_better else (ca[0] > cb[1]):
        return f"beats {name}", True
    if (cb[1] < ca[0]) if lower_better else (cb[0] > ca[1]):
        return f"is worse than {name} beyond the error bars", False
    return f"cannot be told apart from {name}", False


def _baselines(df: pd.DataFrame) -> tuple[Any, Any, pd.Index] | None:
    """(raster-only row, random-only row, annealed rows) of an annealing table, or None
    when it has no anneal columns or lacks one of the three."""
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
    return raster[0], random[0], annealed


def anneal_verdict(df: pd.DataFrame) -> str | None:
    """The paper's Table 2 question answered from `df` (a table with anneal_start and
    anneal_end columns), as one sentence: in FID and in val NLL, does the best annealed row
    beat raster-only (0, 0) and random-only (start = end = the last epoch) beyond the error
    bars? None when the table has no anneal columns or lacks a baseline or annealed row.
    The best annealed row is picked on the same numbers, which favours it slightly (the
    lowest of several noisy values): the sentence says of how many it is the best."""
    found = _baselines(df)
    if found is None:
        return None
    raster, random, annealed = found
    parts, answers = [], []
    for metric in ("fid", "val_nll"):
        scores = df.loc[annealed, metric].astype(float)
        scores = scores[np.isfinite(scores)]
        name = METRIC_NAMES[metric]
        if scores.empty or not known(df.at[raster, metric]) or not known(df.at[random, metric]):
            parts.append(f"in {name} there are not yet the numbers to say")
            continue
        best = scores.idxmin() if metric in LOWER_IS_BETTER else scores.idxmax()
        vs_raster, beats_raster = _compare(
            df, best, raster, metric, f"raster-only {row_name(df, raster)}"
        )
        vs_random, beats_random = _compare(
            df, best, random, metric, f"random-only {row_name(df, random)}"
        )
        answers.append(f"{'yes' if beats_raster and beats_random else 'no'} in {name}")
        which = (
            f"the best of {len(scores)} annealed rows" if len(scores) > 1 else "the annealed row"
        )
        parts.append(f"in {name} {which}, {row_name(df, best)}, {vs_raster}, and {vs_random}")
    verdict = "; ".join(answers) if answers else "not yet known"
    return (
        "Does annealing beat both raster-only and random-only training beyond the error bars? "
        f"As measured, {verdict}: " + "; ".join(parts) + "."
    )
