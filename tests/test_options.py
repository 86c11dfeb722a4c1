"""Flags generated from settings dataclasses (rar.settings.options) and the settings themselves
(rar.settings.stages)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
from pathlib import Path

import pytest

from rar.settings.options import add_options, option, option_values
from rar.settings.stages import (
    LauncherConfig,
    SampleSettings,
    SamplingConfig,
    ScoringSettings,
    TokenizerTraining,
)


@dataclasses.dataclass(frozen=True)
class Toy:
    count: int = option(3, "how many")
    scale: float | None = option(None, "a scale (default: none)")
    name: str = option("a", "a name", choices=("a", "b"))
    out: str | os.PathLike | None = option(None, "a file", flag="--file", metavar="FILE")  # noqa: RUF009
    fast: bool = option(False, "go fast")
    download: bool = option(True, "never download", flag="--no-download")


NAMES = [f.name for f in dataclasses.fields(Toy)]


def _parser(**kwargs) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_options(p, Toy, NAMES, **kwargs)
    return p


def test_flags_take_names_types_defaults_and_switches_from_the_fields():
    args = _parser().parse_args([])
    assert vars(args) == {
        "count": 3,
        "scale": None,
        "name": "a",
        "out": None,
        "fast": False,
        "download": True,
    }
    args = _parser().parse_args(
        ["--count", "5", "--scale", "0.5", "--name", "b", "--file", "x", "--fast", "--no-download"]
    )
    assert (args.count, args.scale, args.name, args.out) == (5, 0.5, "b", "x")
    assert args.fast is True and args.download is False
    with pytest.raises(SystemExit):
        _parser().parse_args(["--name", "c"])  # choices
    assert "--file FILE" in _parser().format_help()


def test_a_command_may_set_its_own_defaults_and_overrides_default_to_none():
    assert _parser(defaults={"count": 10}).parse_args([]).count == 10
    args = _parser(overrides=True).parse_args([])
    assert all(getattr(args, n) is None for n in NAMES if n not in ("fast", "download"))


def test_percent_signs_in_help_survive_argparse():
    @dataclasses.dataclass
    class Pct:
        level: int = option(95, "the 95% interval")

    p = argparse.ArgumentParser()
    add_options(p, Pct, ["level"])
    assert "the 95% interval" in p.format_help()


def test_values_come_back_as_keyword_arguments_with_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = _parser().parse_args(["--file", "sub/x.npz"])
    values = option_values(args, Toy, ["count", "out", "scale"])
    assert values == {"count": 3, "out": str(tmp_path / "sub/x.npz"), "scale": None}


def test_a_field_with_no_flag_form_is_refused():
    @dataclasses.dataclass
    class Bad:
        pair: tuple[int, int] = option((1, 2), "two numbers")

    with pytest.raises(TypeError, match="no command-line flag"):
        add_options(argparse.ArgumentParser(), Bad, ["pair"])


def test_every_settings_field_has_help():
    for cls in (LauncherConfig, SamplingConfig, SampleSettings, ScoringSettings, TokenizerTraining):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


def test_sample_repeats_no_default_of_its_settings():
    """sample() takes a SampleSettings (its defaults when None) and, by name, changes to it
    and the preset's SamplingConfig values: no field is a parameter of its own, so no default
    is written twice."""
    from rar.sampling.sampler import sample, sample_arguments

    params = inspect.signature(sample).parameters
    assert params["settings"].default is None
    assert params["changes"].kind is inspect.Parameter.VAR_KEYWORD
    fields = {f.name for cls in (SampleSettings, SamplingConfig) for f in dataclasses.fields(cls)}
    assert not fields & set(params)
    settings, sampling = sample_arguments(None, {"seed": 4, "temperature": 0.5, "order": None})
    assert settings == SampleSettings(seed=4) and sampling == {"temperature": 0.5, "order": None}
    with pytest.raises(TypeError, match="top_k"):
        sample_arguments(None, {"top_k": 5})


def test_scoring_settings_load_like_train_config(tmp_path):
    path = tmp_path / "scoring.yaml"
    path.write_text("extractor: efficientnet-lite0\nbatch_size: 8\n")
    assert ScoringSettings.load(path) == ScoringSettings(
        extractor="efficientnet-lite0", batch_size=8
    )
    with pytest.raises(ValueError, match=r"scoring settings: unknown key\(s\) batchsize"):
        ScoringSettings.from_dict({"batchsize": 8})
    with pytest.raises(ValueError, match=f"{path}: key 'batch_size' must be int"):
        path.write_text("batch_size: many\n")
        ScoringSettings.load(Path(path))
