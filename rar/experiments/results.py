"""The result files of sampling and scoring, read and written here only. Torch-free, so
`rar status` and `rar report` read them without importing torch.

- `samples.json`, beside a sample set (`samples.npz` -> `samples.json`): how the samples were
  made (rar.sampling.sampler) or which images were reconstructed (rar.sampling.reference_rows);
  `write_samples_info` and `read_samples_info`, and `grid_samples_info` for the one beside a
  sample grid (`grid.png`);
- `metrics.json`, an evaluation's metrics (rar.evaluation.scorer, format `METRICS_FORMAT`):
  `write_metrics` and `read_metrics_record` (rar.report.read turns it into a row's cells);
- `guidance.json`, a guidance sweep's result (rar.sampling.sweep, format `GUIDANCE_FORMAT`):
  `write_guidance`, and `read_guidance` for `rar sample --guidance-scale-from`, `read_sweep`
  for the report.

All are readable JSON in the writer's key order, written atomically.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from rar.files import atomic_write_text, read_json, write_json

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


# ##########################################################################################
# guidance.json
# ##########################################################################################


GUIDANCE_JSON = "guidance.json"  # a sweep's result, in its folder
GUIDANCE_FORMAT = "rar-guidance-sweep/1"
GUIDANCE_SCALE_KEY = "guidance_scale"  # what `rar sample --guidance-scale-from` reads


def write_guidance(path: str | os.PathLike, result: dict) -> None:
    """Write a sweep's result (rar.sampling.sweep.summarize) as `path`, atomically."""
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")


def read_guidance(path: str | os.PathLike) -> dict:
    """The JSON object of a guidance file (a sweep's guidance.json), read once. Raises
    ValueError naming the file and the key when the file is missing, is not JSON or lacks a
    finite number under GUIDANCE_SCALE_KEY."""
    path = Path(path)
    want = f"a JSON object with a number under {GUIDANCE_SCALE_KEY!r}"
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file (expected {want})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not JSON ({err}); expected {want}") from None
    if not isinstance(obj, dict) or GUIDANCE_SCALE_KEY not in obj:
        raise ValueError(f"{path}: no key {GUIDANCE_SCALE_KEY!r} (expected {want})")
    value = obj[GUIDANCE_SCALE_KEY]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{path}: {GUIDANCE_SCALE_KEY!r} is {value!r}, not a finite number")
    return obj


def read_guidance_scale(path: str | os.PathLike) -> float:
    """The guidance scale of a guidance file (`read_guidance`)."""
    return float(read_guidance(path)[GUIDANCE_SCALE_KEY])


def read_sweep(path: str | os.PathLike) -> dict | None:
    """A sweep's guidance.json (`read_guidance`, of GUIDANCE_FORMAT), or None when it
    does not exist yet."""
    path = Path(path)
    if not path.exists():
        return None
    data = read_guidance(path)
    if data.get("format") != GUIDANCE_FORMAT:
        raise ValueError(f"{path}: not a guidance sweep result ({GUIDANCE_FORMAT})")
    return data
