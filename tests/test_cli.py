"""The `rar` command line."""

from __future__ import annotations

import subprocess
import sys

from rar.cli import build_parser, main


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
    assert "tokens/s" in out and "fp32" in out


def test_profile_install_links_once_and_leaves_others_alone(tmp_path, capsys):
    assert main(["profile", "install", "slurm", "--dest", str(tmp_path)]) == 0
    link = tmp_path / "slurm"
    assert link.is_symlink() and (link / "config.yaml").exists()
    assert main(["profile", "install", "slurm", "--dest", str(tmp_path)]) == 0  # idempotent
    (tmp_path / "local").mkdir()  # someone else's profile
    assert main(["profile", "install", "local", "--dest", str(tmp_path)]) == 1
    assert "left alone" in capsys.readouterr().out
    assert main(["profile", "install", "nosuch", "--dest", str(tmp_path)]) == 2
