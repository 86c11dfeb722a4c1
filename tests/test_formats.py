"""One owner per file format (#24): each file the pipeline writes and reads again has one module
with its reader and writer, and its name and columns are declared there only; every other
module calls that one. Read from the source (`ast`), so a second declaration fails here."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from rar.experiments.records import (
    METRICS_FIELDS,
    VAL_FIELDS,
    MetricsLog,
    load_record,
    log_rows,
    read_progress,
    read_record,
    write_record,
)
from rar.experiments.results import (
    grid_samples_info,
    read_metrics_record,
    read_samples_info,
    write_metrics,
    write_samples_info,
)
from rar.files import write_npz
from rar.settings.presets import CROP_MODES, EXTRACTORS, METRIC_KEYS

ROOT = Path(__file__).resolve().parent.parent

# format -> the module that reads and writes it (and the only one in rar/ to spell its name)
OWNERS = {
    "metrics.json": "rar/experiments/results.py",
    "samples.json": "rar/experiments/results.py",
    "metrics.csv": "rar/experiments/records.py",
    "validation.csv": "rar/experiments/records.py",
    "job.json": "rar/experiments/records.py",  # job records; a stage's is `<stem>_job.json`
    "plan.json": "rar/sampling/chunks.py",  # the chunk plan, `<out>.chunks/plan.json`
    "guidance.json": "rar/experiments/results.py",  # a guidance sweep's result
    "source.json": "rar/experiments/data_sets.py",  # what a data set was made from
}
# Each format's columns or version, declared in its owner only: the list of them (any list or
# tuple literal holding all of these strings) or the one string.
COLUMNS = {
    "metrics.csv": ("step", "epoch", "loss", "accuracy", "tokens_per_s", "elapsed_s"),
    "validation.csv": ("step", "epoch", "val_loss", "val_nll", "order"),
    "metrics.json": ("rar-metrics/2",),
}
COLUMN_OWNERS = {
    "metrics.csv": "rar/experiments/records.py",
    "validation.csv": "rar/experiments/records.py",
}
COLUMN_OWNERS["metrics.json"] = OWNERS["metrics.json"]


def _sources() -> dict[str, ast.Module]:
    return {
        str(p.relative_to(ROOT)): ast.parse(p.read_text())
        for p in sorted((ROOT / "rar").rglob("*.py"))
    }


SOURCES = _sources()


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring nodes (prose may name any file)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _strings(tree: ast.Module) -> list[str]:
    """Every string literal of a module but its docstrings, f-strings' pieces included."""
    skip = _docstrings(tree)
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
    ]


def _names_file(text: str, name: str) -> bool:
    """`text` spells the file `name`: the name itself, or a path or stem that ends in it."""
    return text == name or text.endswith(("/" + name, "_" + name))


def _spelled() -> set[tuple[str, str]]:
    return {
        (module, name)
        for module, tree in SOURCES.items()
        for text in _strings(tree)
        for name in OWNERS
        if _names_file(text, name)
    }


def test_each_format_name_is_spelled_by_its_owner_only():
    spelled = _spelled()
    for name, owner in OWNERS.items():
        assert (owner, name) in spelled, f"{owner} does not declare {name}"
    outside = {(module, name) for module, name in spelled if module != OWNERS[name]}
    assert outside == set(), "name the file through its owner module"


def _declares(tree: ast.Module, columns: tuple[str, ...]) -> bool:
    for node in ast.walk(tree):
        if len(columns) == 1 and isinstance(node, ast.Constant) and node.value == columns[0]:
            return True
        if isinstance(node, (ast.List, ast.Tuple)):
            values = {e.value for e in node.elts if isinstance(e, ast.Constant)}
            if len(columns) > 1 and set(columns) <= values:
                return True
    return False


@pytest.mark.parametrize("name", sorted(COLUMNS))
def test_each_format_layout_is_declared_once(name):
    where = [m for m, tree in SOURCES.items() if _declares(tree, COLUMNS[name])]
    assert where == [COLUMN_OWNERS[name]]


def test_crop_modes_are_declared_once_and_the_schema_agrees():
    schema = yaml.safe_load((ROOT / "rar/experiments/study.schema.yaml").read_text())
    assert schema["$defs"]["crop"]["enum"] == list(CROP_MODES)
    where = [m for m, tree in SOURCES.items() if _declares(tree, CROP_MODES)]
    assert where == ["rar/settings/presets.py"]


def test_metric_key_templates_are_declared_once():
    templates = tuple(METRIC_KEYS.values())
    where = [m for m, tree in SOURCES.items() if any(s in templates for s in _strings(tree))]
    assert where == ["rar/settings/presets.py"]
    spec = EXTRACTORS["efficientnet-lite0"]
    assert list(spec.metric_names().values()) == [
        key.format(s=spec.suffix) for key in METRIC_KEYS.values()
    ]


# ##########################################################################################
# Round trips: what the owner writes, the owner reads back
# ##########################################################################################


def test_metrics_csv_round_trip(tmp_path):
    path = tmp_path / "metrics.csv"
    log = MetricsLog(path, 0)
    rows = [dict.fromkeys(METRICS_FIELDS, 0) | {"step": s, "epoch": s / 10} for s in (1, 2)]
    for row in rows:
        log.write(row)
    assert path.read_text().splitlines()[0] == ",".join(METRICS_FIELDS)
    assert [{k: float(v) for k, v in r.items()} for r in log_rows(path)] == rows
    assert read_progress(path).epoch == 0.2
    MetricsLog(path, 1)  # a resume at step 1 drops the rows after it
    assert [r["step"] for r in log_rows(path)] == ["1"]


def test_validation_csv_round_trip(tmp_path):
    path = tmp_path / "validation.csv"
    row = {"step": 5, "epoch": 0.5, "val_loss": 2.5, "val_nll": 2.25, "order": "raster"}
    MetricsLog(path, 0, VAL_FIELDS).write(row)
    assert log_rows(path) == [{k: str(v) for k, v in row.items()}]


def test_job_record_round_trip(tmp_path):
    path = tmp_path / "job.json"
    entry = {"job_id": "7", "state": "RUNNING", "backend": "slurm"}
    write_record(path, entry)
    assert path.read_text() == json.dumps(entry, indent=2) + "\n"
    assert load_record(path) == entry
    assert read_record(path) == {**entry, "_mtime": path.stat().st_mtime}
    path.write_text("{torn")
    assert load_record(path, quiet=True) is None and read_record(path) is None


def test_metrics_json_round_trip(tmp_path):
    record = {"format": "rar-metrics/2", "fid": 3.5, "comparable_to_paper": {"fid": True}}
    write_metrics(tmp_path / "metrics.json", record)
    assert read_metrics_record(tmp_path / "metrics.json") == record
    assert read_metrics_record(tmp_path / "absent.json") is None


def test_samples_json_round_trip(tmp_path):
    samples, info = tmp_path / "samples.npz", {"seed": 3, "grid_classes": 4}
    write_npz(samples, {"arr_0": np.zeros((1, 2, 2, 3), np.uint8)})
    assert read_samples_info(samples) == {}
    assert write_samples_info(samples, info) == tmp_path / "samples.json"
    assert read_samples_info(samples) == info
    assert grid_samples_info(tmp_path / "grid.png") == info
    assert read_samples_info(tmp_path) == {}  # a folder of images has none


def test_chunk_plan_round_trip(tmp_path):
    from rar.sampling.chunks import check_plan, read_plan, write_plan

    plan = {"format": "rar-samples/2", "seed": 1}
    assert read_plan(tmp_path) is None
    write_plan(tmp_path, plan)
    assert read_plan(tmp_path) == plan
    check_plan(tmp_path, plan)  # the same settings: accepted
    with pytest.raises(ValueError, match="other settings"):
        check_plan(tmp_path, {**plan, "seed": 2})
