"""Reading what the other stages wrote: an evaluation's metrics.json, a held-out NLL, a
failure file, a run's training log, a guidance sweep; and the status a row shows for them.

Each reader returns None for a file that does not exist yet (a row still running), and raises
for one it cannot understand: a half-read record must not become a silent blank.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from rar.experiments import PAPER_SAMPLES
from rar.experiments.records import log_text, read_failure_file
from rar.experiments.results import read_metrics_record
from rar.files import read_json
from rar.report.columns import (
    INCEPTION,
    METRIC_KEYS,
    NLL_INTERVAL_KEYS,
    PAPER_METRICS,
    PLAIN_KEYS,
    PathLike,
    extractor_suffix,
    significant_decimals,
)


def read_metrics(path: PathLike | None) -> dict | None:
    """One evaluation's metrics.json -> our column names, or None if the file is absent.

    Returns {fid, fid_ci_low, fid_ci_high, is, is_std, precision, recall, class_accuracy,
    val_nll (float or None), n_samples, extractor, sampling_order, comparable (every metric
    computed is comparable to the paper's), comparable_metrics ({fid, is, precision, recall}
    -> True, False or None: `comparable_metrics`), reasons (list of str)}. Raises ValueError
    when the file exists but lacks its extractor's FID: a half-understood record must not
    become a silent blank.
    """
    record = read_metrics_record(path)
    if record is None:
        return None
    extractor = record.get("extractor", INCEPTION)
    s = extractor_suffix(extractor)
    if f"fid{s}" not in record:
        raise ValueError(f"{path}: no fid{s} for extractor {extractor!r}")
    out: dict[str, Any] = {col: record.get(key.format(s=s)) for col, key in METRIC_KEYS.items()}
    out.update({key: record.get(key) for key in (*PLAIN_KEYS, *NLL_INTERVAL_KEYS)})
    sampling = record.get("sampling") or {}
    per_metric = comparable_metrics(record)
    reasons = list(record.get("not_comparable_because") or [])
    if not isinstance(record.get("comparable_to_paper"), dict) and per_metric["fid"]:
        reasons.append(LEGACY_REASON)
    out.update(
        n_samples=record.get("num_samples"),
        extractor=extractor,
        guidance_scale=sampling.get("guidance_scale"),
        sampling_order=sampling.get("order"),
        comparable=all(ok for ok in per_metric.values() if ok is not None),
        comparable_metrics=per_metric,
        reasons=reasons,
    )
    return out


# rar-metrics/1 records computed IS and precision/recall with torch-fidelity (shuffled IS
# splits, exact float32 distances), not as ADM's evaluator: only their FID can be the paper's.
LEGACY_REASON = "IS, precision and recall from torch-fidelity, not ADM's evaluator (rar-metrics/1)"


def comparable_metrics(record: dict) -> dict[str, bool | None]:
    """Per paper metric, whether a metrics.json computed it as the paper did: its
    `comparable_to_paper` mapping (None: not computed); from a rar-metrics/1 record's one
    boolean, the FID only (LEGACY_REASON)."""
    value = record.get("comparable_to_paper", False)
    if isinstance(value, dict):
        return {m: value.get(m) for m in PAPER_METRICS}
    return {"fid": bool(value), "is": False, "precision": False, "recall": False}


def read_val_nll(path: PathLike | None) -> dict | None:
    """A row's held-out NLL: {val_nll, val_nll_ci_low, val_nll_ci_high} (the interval None
    when the file gives none), or None when `path` is None or absent.

    path: a JSON object with `val_nll` and optionally `val_nll_ci_low`/`val_nll_ci_high` or
    `val_nll_se` (a 95% interval of +-1.96 standard errors); or a CSV with a `val_nll`
    column (a run's validation.csv, rar.training.loop), whose last row counts."""
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
    record = read_json(path)
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
        if p is not None and (record := read_failure_file(Path(p))) is not None:
            return record[0]
    return None


def read_train_log(path: PathLike) -> pd.DataFrame | None:
    """A run's metrics.csv (rar.experiments.records.METRICS_FIELDS; or its validation.csv) as
    numbers sorted by step, or None if absent or without rows.

    The file grows by appended lines while training runs, so a last line without its newline
    is torn and dropped; a resumed run logs again the steps after its last checkpoint, so the
    last record of each step wins. Text columns become NaN."""
    text = log_text(Path(path))
    if text is None:
        return None
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


SWEEP_SEPARATOR = ", "  # between the points of a `guidance_sweep` cell


def sweep_size(cell: str) -> int:
    """How many scales a `guidance_sweep` cell of `guidance_cells` shows."""
    return len(cell.split(SWEEP_SEPARATOR))


def guidance_cells(metrics: dict | None, sweep: PathLike | None) -> dict:
    """The guidance scale an evaluation used, and its sweep's FIDs ("2: 3.10, 4: 2.51*, ...",
    * = chosen, ! = chosen at an edge of the range; three significant digits,
    `significant_decimals`) when a sweep chose it."""
    from rar.experiments.results import read_sweep

    result = read_sweep(sweep) if sweep else None
    scale = (metrics or {}).get("guidance_scale")
    if result is None:
        return {"guidance_scale": scale, "guidance_sweep": None}
    chosen = result["guidance_scale"]
    mark = "!" if result["at_edge"] else "*"
    cells = [
        f"{p['guidance_scale']:g}: {p['fid']:.{significant_decimals('fid', p['fid'])}f}"
        + (mark if p["guidance_scale"] == chosen else "")
        for p in result["points"]
    ]
    return {
        "guidance_scale": scale if scale is not None else chosen,
        "guidance_sweep": SWEEP_SEPARATOR.join(cells),
    }


def row_status(metrics: dict | None, failure: str | None) -> str:
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
