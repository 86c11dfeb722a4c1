"""The result files of sampling and scoring, read and written here only. Torch-free, so
`rar status` and `rar report` read them without importing torch.

- `samples.json`, beside a sample set (`samples.npz` -> `samples.json`): how the samples were
  made (rar.sampling.sampler) or which images were reconstructed (rar.sampling.reference_rows);
  `write_samples_info` and `read_samples_info`, and `grid_samples_info` for the one beside a
  sample grid (`grid.png`);
- `metrics.json`, an evaluation's metrics (rar.evaluation.scorer, format `METRICS_FORMAT`):
  `write_metrics` and `read_metrics_record` (rar.report.read turns it into a row's cells).

Both are readable JSON in the writer's key order (rar.files.write_json), written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rar.files import read_json, write_json

SAMPLES_JSON = "samples.json"
METRICS_JSON = "metrics.json"
# rar-metrics/1: torch-fidelity's IS (shuffled splits) and precision/recall, one boolean
# `comparable_to_paper`; rar-metrics/2: ADM's IS and precision/recall, comparability per metric.
METRICS_FORMAT = "rar-metrics/2"


def samples_info_path(samples: str | os.PathLike) -> Path:
    """The samples.json of a sample set: `samples.npz` -> `samples.json`."""
    return Path(samples).with_suffix(".json")


def write_samples_info(samples: str | os.PathLike, info: dict[str, Any]) -> Path:
    """Write the samples.json of `samples`; returns its path."""
    path = samples_info_path(samples)
    write_json(path, info)
    return path


def read_samples_info(samples: str | os.PathLike) -> dict[str, Any]:
    """The samples.json written beside `samples` (checkpoint, sampling settings, seed, ...);
    {} for a folder of images or a sample set without one."""
    path = samples_info_path(samples)
    if Path(samples).is_dir() or not path.exists():
        return {}
    return read_json(path)


def grid_samples_info(png: str | os.PathLike) -> dict[str, Any]:
    """The samples.json beside a sample grid (rar.sampling.sampler's `grid.png`), or {}."""
    path = Path(png).with_name(SAMPLES_JSON)
    return read_json(path) if path.exists() else {}


def write_metrics(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Write an evaluation's metrics.json (rar.evaluation.scorer's record)."""
    write_json(path, record)


def read_metrics_record(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """An evaluation's metrics.json as written, or None if there is none; ValueError naming
    the file when it is not JSON."""
    if path is None or not Path(path).exists():
        return None
    return read_json(path)
