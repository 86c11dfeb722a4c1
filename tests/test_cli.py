"""The `rar` command line."""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from rar.cli import build_parser, error_message, exit_code, main


def test_help_lists_the_subcommands(capsys):
    try:
        main(["--help"])
    except SystemExit as exit:
        assert exit.code == 0
    assert "bench-sample" in capsys.readouterr().out


def test_parsing_does_not_import_torch():
    code = (
        "import sys; from rar.cli import build_parser; "
        "build_parser().parse_args(['bench-sample']); "
        "assert 'torch' not in sys.modules, 'rar.cli imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_building_the_parser_imports_neither_numpy_nor_submitit():
    """`rar --help` answers at once: the flags generated from rar.settings.stages need neither
    rar.settings.training's numpy nor rar.ops.launch's submitit."""
    code = (
        "import sys; from rar.cli import build_parser; build_parser(); "
        "heavy = {'numpy', 'submitit', 'torch'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_generated_flags_keep_their_names_and_defaults():
    """The flags of sample, sweep-guidance, evaluate and the launcher, generated from
    rar.settings.stages, as the workflow's rules call them."""
    sample = ["sample", "--checkpoint", "c", "--tokenizer", "t", "--out", "o"]
    args = build_parser().parse_args([*sample, "--grid", "g.png", "--launcher", "slurm"])
    assert (args.grid_path, args.backend, args.num_per_class, args.dtype) == (
        "g.png",
        "slurm",
        50,
        "fp32",
    )
    sweep = ["sweep-guidance", "--checkpoint", "c", "--tokenizer", "t", "--scales", "2", "4"]
    args = build_parser().parse_args([*sweep, "--out", "o", "--reference", "r"])
    assert (args.num_per_class, args.extractor, args.time_min) == (10, "inception-v3-compat", None)
    evaluate = ["evaluate", "--samples", "s", "--reference", "r", "--out", "o"]
    assert build_parser().parse_args(evaluate).allow_download is True
    assert build_parser().parse_args([*evaluate, "--no-download"]).allow_download is False


def test_bench_sample_prints_throughput(capsys, tmp_path):
    csv = tmp_path / "bench.csv"
    args = ["bench-sample", "--model", "rar_tiny", "--batch-size", "2", "--steps", "1"]
    assert main([*args, "--csv", str(csv), "--device", "cpu"]) == 0
    assert "images/s" in capsys.readouterr().out
    header, row = csv.read_text().splitlines()
    assert "images_per_s" in header and row.startswith("rar_tiny,")
    assert build_parser().parse_args(args).dtype == "fp32"


def test_bench_train_prints_throughput(capsys):
    args = ["bench-train", "--model", "rar_tiny", "--batch-size", "2", "--steps", "1"]
    assert main([*args, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and "fp32" in out and "fastest" not in out


def test_bench_train_times_several_micro_batches_into_one_csv(tmp_path, capsys):
    csv_path = tmp_path / "train.csv"
    args = ["bench-train", "--model", "rar_tiny", "--batch-size", "4", "2", "--steps", "1"]
    assert main([*args, "--device", "cpu", "--csv", str(csv_path)]) == 0
    assert "fastest micro-batch that fits: " in capsys.readouterr().out
    assert [r["batch_size"] for r in csv.DictReader(csv_path.open())] == ["2", "4"]


def test_profile_install_links_once_and_leaves_others_alone(tmp_path, capsys):
    assert main(["profile", "install", "slurm", "--dest", str(tmp_path)]) == 0
    link = tmp_path / "slurm"
    assert link.is_symlink() and (link / "config.yaml").exists()
    assert main(["profile", "install", "slurm", "--dest", str(tmp_path)]) == 0  # idempotent
    (tmp_path / "local").mkdir()  # someone else's profile
    assert main(["profile", "install", "local", "--dest", str(tmp_path)]) == 1
    assert "left alone" in capsys.readouterr().out
    assert main(["profile", "install", "nosuch", "--dest", str(tmp_path)]) == 2


# -- help texts --------------------------------------------------------------------------------


def _subparsers() -> dict:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_help_shows_each_default_once_and_never_none(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: a line is one option's help
    for name, parser in _subparsers().items():
        text = parser.format_help()
        assert "(default: None)" not in text, name
        assert "(default: False)" not in text, name
        for line in text.splitlines():
            assert line.count("(default") <= 1, f"rar {name}: {line.strip()}"
        assert "example: rar " in text, f"rar {name} lost the example of its description"
    loader = _subparsers()["bench-loader"].format_help()
    assert "DataLoader worker processes (default: 2)" in loader  # real defaults still shown
    train = _subparsers()["train"].format_help()  # required: no "(default: None)"
    assert re.search(r"^  --config CONFIG +run config \(YAML\)$", train, re.MULTILINE)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.strip() == f"rar {version('rar-pipeline')}"


# -- errors: one line, the file named, the exit status ----------------------------------------


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch):
    """RAR_DEBUG in the caller's environment would print tracebacks where these tests expect
    one line."""
    monkeypatch.delenv("RAR_DEBUG", raising=False)


def _no_traceback(err: str, command: str) -> str:
    """The one error line of `rar <command>`'s stderr (anything else there fails the test)."""
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"rar {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_a_missing_config_is_one_line_naming_it(tmp_path, capsys):
    argv = ["train", "--config", str(tmp_path / "missing.yaml"), "--workdir", str(tmp_path / "r")]
    assert main(argv) == 2
    line = _no_traceback(capsys.readouterr().err, "train")
    assert "missing.yaml" in line
    assert main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "missing.yaml" in err


def test_a_missing_reference_is_one_line_naming_it(tmp_path, capsys):
    argv = [
        "evaluate",
        "--samples",
        str(tmp_path / "missing.npz"),
        "--reference",
        str(tmp_path / "missing_ref.npz"),
        "--out",
        str(tmp_path / "m.json"),
        "--extractor",
        "efficientnet-lite0",
        "--device",
        "cpu",
    ]
    assert main(argv) == 2
    assert "missing" in _no_traceback(capsys.readouterr().err, "evaluate")


def test_a_yaml_syntax_error_names_the_file_through_the_entry_point(tmp_path):
    bad = tmp_path / "study.yaml"
    bad.write_text("tables: [table2\nstudy: {name: x}\n")
    command = [sys.executable, "-m", "rar.cli", "plan", "--config", str(bad)]
    env = {k: v for k, v in os.environ.items() if k != "RAR_DEBUG"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert str(bad) in _no_traceback(proc.stderr, "plan")
    proc = subprocess.run(command, capture_output=True, text=True, env={**env, "RAR_DEBUG": "1"})
    assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr


def test_an_unexpected_error_exits_1_with_the_hint(monkeypatch, capsys):
    import rar.experiments

    def broken(path, root=None):
        raise RuntimeError("boom")

    monkeypatch.setattr(rar.experiments, "load_study_file", broken)
    assert main(["plan"]) == 1
    line = _no_traceback(capsys.readouterr().err, "plan")
    assert line == "rar plan: error: RuntimeError: boom (run with --debug for the traceback)"
    assert main(["--debug", "plan"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_ctrl_c_exits_130_quietly(monkeypatch, capsys):
    import rar.experiments

    def interrupted(path, root=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(rar.experiments, "load_study_file", interrupted)
    assert main(["plan"]) == 130
    assert capsys.readouterr().err == ""


def test_a_job_traceback_becomes_one_line():
    from rar.ops.launch import LaunchError

    traceback = (
        'Traceback (most recent call last):\n  File "x.py", line 1, in f\n'
        "FileNotFoundError: [Errno 2] No such file or directory: '/data/c.yaml'"
    )
    err = LaunchError(f"job 7 (train_x) failed:\n{traceback}", log="/logs/7/7_0_log.err")
    assert error_message(err) == (
        "job 7 (train_x) failed: FileNotFoundError: [Errno 2] No such file or directory: "
        "'/data/c.yaml' (job log: /logs/7/7_0_log.err)"
    )
    assert exit_code(err) == 1
    assert error_message(LaunchError("no sbatch here")) == "no sbatch here"
    assert error_message(KeyError("shards")) == "KeyError: 'shards'"


def test_a_failed_local_job_is_one_line(tmp_path, capsys):
    """A launched job's error, re-raised by rar.ops.launch with the job's traceback, is printed as
    one line naming the file at fault and the job's log."""
    launcher = tmp_path / "launcher.yaml"
    launcher.write_text(f"folder: {tmp_path / 'submitit'}\npoll_s: 0.2\n")
    argv = [
        "train",
        "--config",
        str(tmp_path / "missing.yaml"),
        "--workdir",
        str(tmp_path / "run"),
        "--launcher",
        "local",
        "--launcher-config",
        str(launcher),
    ]
    assert main(argv) == 1
    line = _no_traceback(capsys.readouterr().err, "train")
    assert "failed: FileNotFoundError" in line and "missing.yaml" in line
    assert "(job log: " in line and line.endswith("(run with --debug for the traceback)")
    assert json.loads((tmp_path / "run/job.json").read_text())["gpus"] == 0  # `rar status`: CPU-h


# -- manifest.json that is not JSON, or not the expected shape ----------------------------------


def _write_manifest(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(text)
    return folder


GOOD_MANIFEST = {
    "format": "rar-token-shards/1",
    "num_samples": 2,
    "num_source_images": 2,
    "num_classes": 1,
    "samples_per_image": 1,
    "tokens_per_sample": 4,
    "tokenizer": {"codebook_size": 8},
    "shards": [
        {"name": "train-000000.tar", "part": 0, "num_samples": 2, "size": 1, "sha256": "0" * 64}
    ],
}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not readable JSON"),
        ("[1, 2]", "expected a JSON object, found list"),
        (json.dumps({**GOOD_MANIFEST, "format": "other/9"}), "unknown format 'other/9'"),
        (
            json.dumps({k: v for k, v in GOOD_MANIFEST.items() if k != "shards"}),
            "key 'shards' is missing",
        ),
        (json.dumps({**GOOD_MANIFEST, "num_samples": "2"}), "key 'num_samples' must be an integer"),
        (
            json.dumps({**GOOD_MANIFEST, "shards": [{"name": "a.tar"}]}),
            "shards[0] key 'part' is missing",
        ),
    ],
)
def test_a_bad_manifest_names_the_file_and_the_problem(tmp_path, capsys, text, problem):
    from rar.data.shards import ShardError, load_manifest

    folder = _write_manifest(tmp_path / "shards", text)
    with pytest.raises(ShardError) as err:
        load_manifest(folder)
    assert str(err.value).startswith(f"{folder / 'manifest.json'}: ")
    assert problem in str(err.value) and "rar tokenize" in str(err.value)
    assert main(["verify-shards", str(folder)]) == 1  # a report, not a traceback
    out = capsys.readouterr().out
    assert "manifest.json" in out and problem in out


def test_the_loader_names_a_bad_manifest(tmp_path, capsys):
    folder = _write_manifest(tmp_path / "shards", "")
    assert main(["bench-loader", str(folder), "--seconds", "0.1"]) == 2
    line = _no_traceback(capsys.readouterr().err, "bench-loader")
    assert f"{folder / 'manifest.json'}: not readable JSON" in line


def test_a_well_formed_manifest_passes_the_shape_check(tmp_path):
    from rar.data.shards import load_manifest

    folder = _write_manifest(tmp_path / "good", json.dumps(GOOD_MANIFEST))
    assert load_manifest(folder) == GOOD_MANIFEST


def test_fetch_only_help_names_every_resource_of_the_registry():
    """`rar fetch --only`'s help comes from rar.experiments.resources.RESOURCES: every key
    `rar fetch` knows, in the registry's order (a resource added there appears)."""
    from rar.experiments.resources import RESOURCES

    fetch = _subparsers()["fetch"]
    only = next(a for a in fetch._actions if "--only" in a.option_strings)
    assert only.help.split(": ", 1)[1].split() == list(RESOURCES)
    text = " ".join(fetch.format_help().split())
    assert f"these (of those the study needs): {' '.join(RESOURCES)}" in text
    assert fetch.parse_args(["--only", "inception", "rar_b"]).only == ["inception", "rar_b"]
