"""A run's training settings are declared once, in `rar.settings.training.TrainConfig` (its
identity): every field reaches `rar train` from the study, and the study's schema and the command
add no training key of their own.

The fields come from the dataclass, never from a list here. Each field is set in a study's
`train:` block to a value other than the demo's (one of its type, `other_values`), and must
either reach the run's config, then the run config file the workflow writes (rule run_config,
workflow/scripts/write_run_config.py) or `--settings` (rule train), then the TrainConfig that
`rar train` trains with; or be refused by the check that names it (a model size, a precision);
or be one the study derives from its `data:` and `tokenizer:` keys, and refuses in `train:`.
"""

from __future__ import annotations

import dataclasses
import json
import runpy
import shlex
from pathlib import Path
from types import SimpleNamespace
from typing import Any, get_type_hints

import pytest
import yaml

import rar.training.loop
from rar.cli import main
from rar.experiments import SCHEMA, StudyError, load_study
from rar.experiments.rules import RuleWiring
from rar.settings.presets import ARCHITECTURES, RAR_CONFIGS, SCAN_ORDERS
from rar.settings.training import OUTSIDE_IDENTITY, WANDB_MODES, TrainConfig

REPO = Path(__file__).resolve().parents[1]
FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
HINTS = get_type_hints(TrainConfig)
# Where the study takes the settings it derives (build._train_settings and the data set's
# folder): each such field, and the schema keys it comes from.
DERIVED = {
    "data": ["data.dataset", "tokenizer.name", "data.crop"],
    "source_images": ["data.source_images"],
    "num_classes": ["data.num_classes"],
    "codebook_size": ["tokenizer.codebook_size"],
    "num_tokens": ["tokenizer.grid"],
}


def demo_study_config() -> dict:
    """config/demo.yaml with one table of one row: a single run, set by `train:` alone."""
    config = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    sampling = {"guidance_schedule": "linear", "guidance_scale": 2.0}
    config["tables"] = {"only": {"base": {"sampling": sampling}, "rows": [{}]}}
    config.pop("official", None)
    return config


def only_run(config: dict):
    """The study's one run, and the study."""
    study = load_study(config, source="test")
    (run,) = study.runs.values()
    return run, study


def other_values(name: str, value: Any) -> list:
    """Values of the field's type other than `value`: of a number, larger ones; of a string,
    the names the package's settings take (the first a check accepts is used)."""
    if isinstance(value, bool) or HINTS[name] == bool | str:
        candidates = [not value] if isinstance(value, bool) else [True, False]
    elif isinstance(value, int):
        candidates = [value * 2, value + 1]
    elif isinstance(value, float):
        candidates = [value + 1.0, value * 2 + 1.0]
    elif isinstance(value, tuple):
        candidates = [tuple(x / 2 for x in value) or (1.0,)]
    else:
        names = [*RAR_CONFIGS, *SCAN_ORDERS, *ARCHITECTURES, *WANDB_MODES, "fp32", "bf16"]
        candidates = [*names, "x"]
    return [v for v in candidates if v != value]


def study_with(name: str, value: Any) -> dict:
    config = demo_study_config()
    config["train"] = {
        **config.get("train", {}),
        name: list(value) if isinstance(value, tuple) else value,
    }
    return config


def rar_train_config(run, wiring: RuleWiring, tmp_path: Path, monkeypatch) -> TrainConfig:
    """The TrainConfig `rar train` trains the run with: its file as rule run_config writes it,
    its `--settings` as rule train passes them, through the command (its training stubbed)."""
    config_file = tmp_path / "config.yaml"
    snakemake = SimpleNamespace(
        log=[str(tmp_path / "run_config.log")],
        params=SimpleNamespace(config=wiring.run_config_dict(SimpleNamespace(run=run.id))),
        output=SimpleNamespace(config=str(config_file)),
    )
    runpy.run_path(
        str(REPO / "workflow/scripts/write_run_config.py"), init_globals={"snakemake": snakemake}
    )
    settings = shlex.split(wiring.train_settings(SimpleNamespace(run=run.id)))
    seen = []

    class Source:
        def __init__(self, data, **kwargs):
            self.manifest = {}

    monkeypatch.setattr(rar.training.loop, "ShardBatchSource", Source)
    monkeypatch.setattr(rar.training.loop, "check_data", lambda *args: None)
    monkeypatch.setattr(rar.training.loop, "find_heldout", lambda *args: "none here")
    monkeypatch.setattr(rar.training.loop, "find_tokenizer", lambda *args: "none here")
    monkeypatch.setattr(
        rar.training.loop, "train", lambda cfg, workdir, **kw: seen.append(cfg) or workdir
    )
    argv = ["train", "--config", str(config_file), "--workdir", str(tmp_path / "run")]
    assert main([*argv, *settings]) == 0
    (cfg,) = seen
    return cfg


@pytest.mark.parametrize("name", FIELDS)
def test_each_training_field_reaches_rar_train_from_the_study(name, tmp_path, monkeypatch):
    base = only_run(demo_study_config())[0].config
    current = getattr(base, name)
    if name in DERIVED:
        with pytest.raises(StudyError, match=name):
            only_run(study_with(name, other_values(name, current)[0]))
        return
    refusals = []
    for value in other_values(name, current):
        try:
            run, study = only_run(study_with(name, value))
        except StudyError as err:  # the value reached a check that names the key
            assert name in str(err), err
            refusals.append(value)
            continue
        assert getattr(run.config, name) == value
        assert rar_train_config(run, RuleWiring(study), tmp_path, monkeypatch) == run.config
        return
    pytest.fail(f"{name}: no value other than {current!r} reached a run: {refusals}")


def test_the_run_file_and_settings_carry_each_field_once():
    """Rule run_config's file holds the run's identity, rule train's --settings the rest
    (OUTSIDE_IDENTITY): together every field, none twice."""
    _, study = only_run(demo_study_config())
    wiring = RuleWiring(study)
    (run_id,) = study.runs
    in_file = set(wiring.run_config_dict(SimpleNamespace(run=run_id)))
    settings = shlex.split(wiring.train_settings(SimpleNamespace(run=run_id)))
    assert settings[0] == "--settings"
    in_settings = set(json.loads(settings[1]))
    assert in_file | in_settings == set(FIELDS) and not in_file & in_settings
    assert in_settings == OUTSIDE_IDENTITY


def test_derived_fields_come_from_schema_keys():
    """What the study derives is exactly what it refuses in `train:`, and each comes from keys
    the schema declares."""
    schema = yaml.safe_load(SCHEMA.read_text())
    for keys in DERIVED.values():
        for key in keys:
            section, leaf = key.split(".")
            assert leaf in schema["properties"][section]["properties"], key
    refused = set()
    for name in FIELDS:
        value = getattr(TrainConfig(), name)
        config = study_with(name, value)
        try:
            load_study(config, source="test")
        except StudyError as err:
            if "follow from `data` and `tokenizer`" in str(err):
                refused.add(name)
    assert refused == set(DERIVED)


def test_the_schema_declares_no_training_key_of_its_own():
    """The schema leaves training keys to TrainConfig: its `train:` block declares none (and no
    default), and a table row's own keys are not TrainConfig's."""
    schema = yaml.safe_load(SCHEMA.read_text())
    train = schema["properties"]["train"]
    declared = set(train.get("properties", {})) | set(train.get("required", []))
    assert declared <= set(FIELDS), declared - set(FIELDS)
    assert train.get("default") == {} and train.get("additionalProperties", True) is not False
    row = schema["$defs"]["row"]
    assert not set(row["properties"]) & set(FIELDS)
    assert row.get("additionalProperties", True) is not False


def test_rar_train_has_no_flag_for_a_training_field():
    """`rar train` takes the run's settings from --config and --settings only: no flag of its
    own restates a TrainConfig field."""
    import argparse

    from rar.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {a.dest for a in sub.choices["train"]._actions}
    assert not flags & set(FIELDS), flags & set(FIELDS)
