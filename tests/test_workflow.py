"""The Snakemake workflow: lint, the paper's DAG as a dry run, and the demo DAG for real."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def snakemake(*args, cwd=REPO, timeout=900, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def job_counts(stdout: str) -> dict[str, int]:
    """The 'job stats' table of a dry run: rule -> count."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stdout, re.MULTILINE)}


def test_lint_is_clean():
    proc = snakemake("--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def fake_imagenet(tmp_path) -> Path:
    """What a user brings, as empty stand-ins: the image tree and the weight files."""
    for wnid in ("n01440764", "n01443537"):
        (tmp_path / "resources/imagenet/train" / wnid).mkdir(parents=True)
        (tmp_path / "resources/imagenet/train" / wnid / f"{wnid}_1.JPEG").write_bytes(b"")
    for name in (
        "maskgit-vqgan-imagenet-f16-256.bin",
        "pt_inception-2015-12-05-6726825d.pth",
        "VIRTUAL_imagenet256_labeled.npz",
    ):
        (tmp_path / "resources" / name).write_bytes(b"")
    return tmp_path


def test_paper_dry_run_plans_20_runs_with_one_trunk(fake_imagenet):
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["tables"] = {k: config["tables"][k] for k in ("table2", "table3")}
    path = fake_imagenet / "paper.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake(
        "-n", "--quiet", "rules", "-d", str(fake_imagenet),
        "--configfile", str(path), "--replace-workflow-config",
    )  # fmt: skip
    jobs = job_counts(proc.stdout)
    assert jobs["train"] == 20  # 15 + 6 rows, table2 (200, 300) = table3 row-major
    assert jobs["train_segment"] == 3  # the trunk stops at 100, 200 and 300 for branches
    assert jobs["sample"] == jobs["evaluate"] == 20
    assert jobs["tokenize_part"] == 16 and jobs["shards"] == 1
    assert jobs["table"] == 2
