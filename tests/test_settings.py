"""Every setting declared once (#24): the fields of the settings dataclasses
(rar.settings.stages, TokenizerTraining among them) reach the command line, the study schema and
the workflow's rules from their declaration, never through a hand-copied list. Where a hand
list remains (the schema's YAML, the exclusions below), this file holds it equal to the
dataclass."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from types import SimpleNamespace as W

import pytest
import yaml

from rar.cli import build_parser
from rar.cli.common import LAUNCHER_OPTIONS
from rar.experiments import SCHEMA, load_study
from rar.experiments.build import SAMPLING_KEYS
from rar.experiments.rules import RuleWiring
from rar.settings.options import flag_of, option_values
from rar.settings.stages import (
    SAMPLING_FIELDS,
    LauncherConfig,
    SampleSettings,
    SamplingConfig,
    ScoringSettings,
    TokenizerTraining,
)
from rar.settings.training import TrainConfig

REPO = Path(__file__).resolve().parents[1]

# The sampling settings, each declared once, as a field of SamplingConfig.
SAMPLING_SETTINGS = (
    "guidance_scale",
    "temperature",
    "order",
    "guidance_schedule",
    "guidance_power",
)
# Study-only sampling keys, no field of a dataclass: the preset (resolved by
# rar.experiments.build, never passed on), a sweep's scales and its per-scale sample count.
STUDY_ONLY = {"preset", "guidance_scales", "sweep_per_class"}
# SampleSettings fields that the study's `sampling:` block holds (preset: `sampling_keys`).
SAMPLE_STUDY_KEYS = {"num_per_class", "chunk_size", "seed", "preset"}
# SampleSettings fields outside the schema's sampling block: runtime knobs, or set from
# another block of the study.
SAMPLE_RUNTIME_ONLY = {
    "num_classes": "data.num_classes (default: the model's own)",
    "device": "where this process runs",
    "dtype": "the stage's precision, not the study's",
    "compile": "a speed knob",
    "grid_path": "the rule's output file",
    "merge_timeout_s": "how long rank 0 waits",
    "keep_chunks": "debugging",
    "check_extractor": "evaluation.extractor",
    "extractor_weights": "evaluation.weights",
}
# ScoringSettings fields without a `rar evaluate` flag: ADM's constants and a verbosity knob,
# settable from Python (`rar.evaluation.scorer.Scorer`) only.
SCORING_API_ONLY = {"isc_split_size", "prc_neighborhood", "bootstrap_seed", "verbose"}
# LauncherConfig fields only a --launcher-config file (a profile's <stage>.yaml) sets.
LAUNCHER_FILE_ONLY = {
    "folder",
    "constraint",
    "tasks_per_node",
    "signal_delay_s",
    "poll_s",
    "mail_user",
    "mail_type",
    "extra",
}


def _names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _command(name: str):
    return build_parser()._subparsers._group_actions[0].choices[name]


def _actions(name: str) -> dict:
    """dest -> action of a subcommand's flags."""
    return {a.dest: a for a in _command(name)._actions if a.option_strings}


@pytest.fixture(scope="module")
def schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


@pytest.fixture(scope="module", params=["config/config.yaml", "config/demo.yaml"])
def wiring(request) -> RuleWiring:
    return RuleWiring(load_study(yaml.safe_load((REPO / request.param).read_text())))


def test_each_sampling_setting_is_declared_once():
    assert SAMPLING_FIELDS == SAMPLING_SETTINGS == tuple(_names(SamplingConfig))
    others = (SampleSettings, ScoringSettings, LauncherConfig, TokenizerTraining, TrainConfig)
    for cls in others:
        assert not set(SAMPLING_SETTINGS) & set(_names(cls)), cls.__name__
    for f in dataclasses.fields(SamplingConfig):
        assert f.metadata["help"], f.name


def test_no_module_writes_a_sampling_flag_by_hand():
    """The flags come from the fields (rar.settings.options.flag_of): no string of the code is
    one."""
    flags = {flag_of(f) for f in dataclasses.fields(SamplingConfig)}
    for path in [*REPO.glob("rar/**/*.py"), *REPO.glob("workflow/**/*.smk"), REPO / "Snakefile"]:
        if path.suffix != ".py":
            assert not [f for f in flags if f"{f} " in path.read_text()], path
            continue
        tree = ast.parse(path.read_text())
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
        assert not flags & strings, path


def test_each_sampling_setting_is_a_flag_of_the_commands_that_sample():
    for command, names in [
        ("sample", SAMPLING_SETTINGS),
        ("sweep-guidance", SAMPLING_SETTINGS[1:]),  # the scale is what it sweeps (--scales)
        ("bench-sample", ("guidance_scale",)),
    ]:
        actions = _actions(command)
        for field in dataclasses.fields(SamplingConfig):
            if field.name in names:
                action = actions[field.name]
                assert action.option_strings == [flag_of(field)], (command, field.name)
                assert action.default is None, "unset: the preset's value"
                assert "(default: the preset's)" in action.help
    for field in dataclasses.fields(SampleSettings):  # every SampleSettings field, too
        assert _actions("sample")[field.name].option_strings == [flag_of(field)]


def test_scoring_launcher_and_tokenizer_settings_reach_their_flags():
    evaluate = _actions("evaluate")
    for name in _names(ScoringSettings):
        assert (name in evaluate) != (name in SCORING_API_ONLY), name
    sample = _actions("sample")
    launcher = {"backend", *LAUNCHER_OPTIONS}
    assert launcher <= set(sample) and not LAUNCHER_FILE_ONLY & set(sample)
    assert launcher | LAUNCHER_FILE_ONLY == set(_names(LauncherConfig))
    assert set(_names(TokenizerTraining)) <= set(_actions("train-tokenizer"))


def test_the_schema_knows_each_sampling_setting(schema):
    keys = schema["$defs"]["sampling_keys"]["properties"]
    assert set(keys) == set(SAMPLING_KEYS) == {*SAMPLING_SETTINGS, "preset", "guidance_scales"}
    study = schema["properties"]["sampling"]["allOf"][1]["properties"]
    assert set(study) | {"preset"} == SAMPLE_STUDY_KEYS | {"sweep_per_class"}
    for name in _names(SampleSettings):  # each in the study or named a runtime knob, not both
        assert (name in SAMPLE_STUDY_KEYS) != (name in SAMPLE_RUNTIME_ONLY), name
    defaults = SampleSettings()
    for name in SAMPLE_STUDY_KEYS - {"preset"}:  # one default: the dataclass's
        assert study[name]["default"] == getattr(defaults, name), name
    assert set(keys) | set(study) == {*SAMPLING_SETTINGS, *SAMPLE_STUDY_KEYS, *STUDY_ONLY}
    train = schema["properties"]["tokenizer"]["properties"]["train"]["properties"]
    assert set(train) == {*_names(TokenizerTraining), "downsample"}


def _parse(command: str, args: list) -> dict:
    """The SamplingConfig values `args` give `command` (unset flags left out)."""
    required = ["--checkpoint", "c", "--tokenizer", "t", "--out", "o"]
    if command == "sweep-guidance":
        required += ["--reference", "r"]
    parsed = _command(command).parse_args([*required, *map(str, args)])
    names = [name for name in SAMPLING_FIELDS if hasattr(parsed, name)]
    values = option_values(parsed, SamplingConfig, names)
    return {k: v for k, v in values.items() if v is not None}


def test_each_evaluations_sampling_reaches_its_rule_whole(wiring):
    """Every resolved sampling setting of every evaluation and sweep of both studies is on
    its rule's command line, and `rar sample` / `rar sweep-guidance` parse it back."""
    for eid, ev in wiring.study.evaluations.items():
        if ev.kind not in ("model", "untrained"):
            continue
        w = W(evaluation=eid)
        guidance = wiring.sweep_result(w)
        args = wiring.sample_args(w, W(guidance=guidance))
        want = {k: v for k, v in ev.sampling.items() if k in SAMPLING_SETTINGS}
        if guidance:  # the scale comes from the sweep's file
            assert "guidance_scale" not in want and "--guidance-scale-from" in args
        assert _parse("sample", args) == want, eid
    for sid, sweep in wiring.study.sweeps.items():
        args = wiring.sweep_args(W(sweep=sid))
        assert _parse("sweep-guidance", args) == sweep.sampling, sid
    assert wiring.study.sweeps or wiring.study.evaluations


def _gpu_md_kv_table() -> list[list[str]]:
    """docs/gpu.md's KV-cache table, one list of cells a size."""
    lines = (REPO / "docs/gpu.md").read_text().splitlines()
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in lines
        if line.startswith("| RAR-")
    ]


def test_the_kv_cache_table_of_docs_gpu_is_what_the_formula_returns():
    """docs/gpu.md's per-image KV caches are `kv_cache_bytes` (MiB, rounded), at each size's
    layers and width."""
    from rar.settings.presets import RAR_CONFIGS, kv_cache_bytes

    rows = _gpu_md_kv_table()
    assert [r[0] for r in rows] == ["RAR-B", "RAR-L", "RAR-XL", "RAR-XXL"]
    for size, shape, *caches, _largest in rows:
        model = size.lower().replace("-", "_")
        c = RAR_CONFIGS[model]
        assert shape == f"{c['num_layers']} x {c['hidden_size']}"
        want = [
            kv_cache_bytes(model, n, value_bytes=b) for n, b in ((256, 2), (1024, 2), (1024, 4))
        ]
        assert caches == [f"{round(w / 2**20)} MiB" for w in want], size


def test_a_chunk_holds_its_weights_and_a_kv_cache_an_image():
    """chunk_memory_bytes = weights + chunk x cache + a decoding slice; largest_chunk is the
    most images whose caches, weights and slice fit all but the margin of the device (0 when
    not even the weights do)."""
    from rar.settings.presets import (
        DECODE_BYTES_PER_PIXEL,
        SAMPLING_MEMORY_MARGIN,
        chunk_memory_bytes,
        decode_slice,
        kv_cache_bytes,
        largest_chunk,
    )

    per_image = kv_cache_bytes("rar_xxl", 1024, value_bytes=4)
    assert per_image == 2 * 40 * 2 * 1025 * 1408 * 4
    decoding = 8 * 512 * 512 * DECODE_BYTES_PER_PIXEL  # 8 GiB
    assert chunk_memory_bytes("rar_xxl", 1024, 50, weight_bytes=6) == 6 + 50 * per_image + decoding
    assert [decode_slice(s * s) for s in (512, 256, 32, 4096)] == [8, 32, 2048, 1]
    device = 80 * 2**30
    n = largest_chunk("rar_xxl", 1024, device, weight_bytes=2**30)
    usable = device * (1 - SAMPLING_MEMORY_MARGIN)
    assert chunk_memory_bytes("rar_xxl", 1024, n, weight_bytes=2**30) <= usable
    assert chunk_memory_bytes("rar_xxl", 1024, n + 1, weight_bytes=2**30) > usable
    bf16 = largest_chunk("rar_xxl", 1024, device, weight_bytes=2**30, value_bytes=2)
    assert bf16 in (2 * n, 2 * n + 1)  # half the bytes an image
    assert largest_chunk("rar_xxl", 1024, 2**30, weight_bytes=2**30) == 0
