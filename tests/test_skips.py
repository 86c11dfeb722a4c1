"""tests/conftest.py's skip policy: every skip reason is listed at the end of a session, and
under RAR_CI (.ci/run) a skip for any reason but "no GPU" or "running as root" fails it.

Each case runs pytest in a subprocess on a folder holding a copy of the conftest and a test file
whose tests skip on purpose.
"""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parent / "conftest.py"
POLICY = runpy.run_path(str(CONFTEST))


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("suite")
    shutil.copy(CONFTEST, folder / "conftest.py")
    (folder / "pytest.ini").write_text("[pytest]\n")  # the folder is its own root
    (folder / "test_x.py").write_text(
        "import pytest\n\n"
        f"def test_without_gpu():\n    pytest.skip({POLICY['NO_GPU']!r})\n\n"
        f"def test_as_root():\n    pytest.skip({POLICY['AS_ROOT']!r})\n\n"
        "def test_missing_file():\n    pytest.skip('reference file not found')\n\n"
        "def test_runs():\n    pass\n"
    )
    return folder


def run(suite: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("RAR_CI", "RAR_SKIP_REPORT")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_x.py", *args],
        cwd=suite,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_skip_reason_is_listed_with_its_count(suite, tmp_path):
    report = tmp_path / "skips.txt"
    proc = run(suite, RAR_SKIP_REPORT=str(report))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reasons = sorted([POLICY["AS_ROOT"], POLICY["NO_GPU"], "reference file not found"])
    listed = [f"   1 skipped: {reason}" for reason in reasons]
    assert report.read_text().splitlines() == ["== skip reasons", *listed]
    summary = proc.stdout[proc.stdout.index("skip reasons") :]
    assert all(line in summary for line in listed)


def test_under_rar_ci_any_other_skip_fails_the_session(suite):
    proc = run(suite, RAR_CI="1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "failing the session for: reference file not found" in proc.stdout
    assert "3 skipped" in proc.stdout and "1 passed" in proc.stdout


def test_under_rar_ci_no_gpu_and_root_may_skip(suite):
    proc = run(suite, "-k", "not missing_file", RAR_CI="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "failing the session" not in proc.stdout
