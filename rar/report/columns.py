"""What each column of a table is: the metrics.json key it comes from, its name, decimals and
direction, its interval, and how one cell of it reads.

A new metric is added here (and read in `rar.report.read`); every table, caption and plot
takes its name, decimals and direction from these registries, so they never disagree.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from rar.settings.presets import (  # noqa: F401 (METRIC_KEYS: re-exported for rar.report)
    EXTRACTORS,
    INCEPTION,
    METRIC_KEYS,
)

PathLike = str | os.PathLike

# Metric-name suffix per extractor ("" for the paper's Inception).
EXTRACTOR_SUFFIXES = {name: spec.suffix for name, spec in EXTRACTORS.items()}

# Our column -> metrics.json key without the extractor suffix: METRIC_KEYS (rar.settings.presets).
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
# the paper's metrics as it prints them, then ours
DECIMALS = {
    "fid": 2,
    "is": 1,
    "is_std": 1,
    "precision": 2,
    "recall": 2,
    "class_accuracy": 2,
    "val_nll": 3,
}
# A value shown with its interval (and the interval) keeps one digit past the half-width's
# leading significant digit, never more than DECIMALS: 58 ± 70 reads `58 [-12, 128]`, not
# `58.37 [-11.63, 128.37]` (`interval_decimals`). CSVs keep every digit: they are data.
LOWER_IS_BETTER = {"fid", "val_nll"}
# Metrics with a 95% interval: column -> (low column, high column).
INTERVALS = {"fid": ("fid_ci_low", "fid_ci_high"), "val_nll": ("val_nll_ci_low", "val_nll_ci_high")}
RESULT_COLUMNS = [
    "fid",
    "fid_ci_low",
    "fid_ci_high",
    "beyond_best",
    "is",
    "is_std",
    "precision",
    "recall",
    "class_accuracy",
    "val_nll",
    "val_nll_ci_low",
    "val_nll_ci_high",
    "n_samples",
    "extractor",
    "comparable",
    "sampling_order",
    "guidance_scale",
    "guidance_sweep",
    "status",
]
PAPER_COLUMNS = [c for m in PAPER_METRICS for c in (f"paper_{m}", f"{m}_diff")]
ID_COLUMNS = ["kind", "run", "evaluation", "label"]
ROW_KINDS = ("row", "reference")  # a table row, or a reference row (floor or ceiling)
BEYOND = "†"  # marks a value whose interval does not overlap the best row's
MISSING = "–"  # how an unknown number reads in Markdown and on plots


def extractor_suffix(extractor: str) -> str:
    """The suffix of `extractor`'s metric names in metrics.json ("" for Inception); an
    extractor not listed follows rar.evaluation.scorer's rule (its name, `-` turned into `_`)."""
    if extractor in EXTRACTOR_SUFFIXES:
        return EXTRACTOR_SUFFIXES[extractor]
    return "_" + re.sub(r"[^a-z0-9]+", "_", extractor.lower())


def extractors_of(df: pd.DataFrame) -> list[str]:
    """The feature extractors a table's numbers come from, sorted."""
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


def known(value: Any) -> bool:
    """Whether `value` is a value: not None, NA or NaN."""
    return not (value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)))


def is_true(value: Any) -> bool:
    """True for True (Python, numpy or pandas' nullable boolean), False for False and NA."""
    return known(value) and bool(value)


def interval_decimals(metric: str, low: float, high: float) -> int:
    """The decimals of a `metric` value shown with its interval [low, high]: one digit past
    the leading significant digit of the half-width (±70 -> 0, ±2 -> 1, ±0.35 -> 2), at most
    DECIMALS[metric]; DECIMALS for an empty or unknown width."""
    half = (high - low) / 2
    if not (math.isfinite(half) and half > 0):
        return DECIMALS[metric]
    # The exponent of the half-width rounded to one significant digit (0.0999... is 1e-01,
    # where floor(log10) would say -2).
    leading = int(f"{half:.0e}".split("e")[1])
    return max(0, min(DECIMALS[metric], 1 - leading))


def significant_decimals(metric: str, value: float, digits: int = 3) -> int:
    """The decimals of a `metric` value shown without an interval (a sweep's FIDs): `digits`
    significant digits, never rounding the integer part, at most DECIMALS[metric]
    (1294.37 -> 0, 25.13 -> 1, 2.514 -> 2)."""
    if not (math.isfinite(value) and value != 0):
        return DECIMALS[metric]
    leading = int(f"{abs(value):.{digits - 1}e}".split("e")[1])
    return max(0, min(DECIMALS[metric], digits - 1 - leading))


def fmt_cell(value: Any, decimals: int | None = None, sign: bool = False) -> str:
    """A Markdown cell: numbers to `decimals`, unknowns as a dash, pipes escaped."""
    if not known(value):
        return MISSING
    if decimals is not None:
        return f"{float(value):{'+' if sign else ''}.{decimals}f}"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|")
