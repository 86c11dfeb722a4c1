"""Shared fixtures. tests/ is not a package (see pyproject.toml): shared fixtures live here,
shared functions in tests/helpers.py (`from helpers import ...`)."""

from __future__ import annotations

import collections
import os
import shutil
from pathlib import Path

import pytest

# cuBLAS reads its workspace setting once, at its first call in the process; a GPU test of
# `deterministic: true` training (rar.runtime.deterministic_algorithms) may come after other
# CUDA work, so the test session fixes it before any.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

# The reference files the parity tests compare against (tests/data/README.md).
DATA = Path(__file__).resolve().parent / "data"


# Every skip of the suite is decided here, by marker, and says why in one of these words. CI
# (.ci/run sets RAR_CI=1) runs on a machine with no GPU, as root, with the local SLURM cluster
# started and Chromium installed: there, only the first two may skip; any other skip fails the
# session.
NO_GPU = "no GPU: needs CUDA, none on this machine"
AS_ROOT = "running as root: root reads every file whatever its mode"
NO_SLURM = "no SLURM cluster answers (.ci/run starts the local one)"
NO_CHROMIUM = "no chromium on the PATH (.ci/run installs Debian's chromium package)"
ALLOWED_IN_CI = (NO_GPU, AS_ROOT)
SKIPS: list[str] = []  # the reason of each skip of this session


def pytest_collection_modifyitems(config, items):
    import torch

    def skip(marker: str, reason: str) -> None:
        for item in items:
            if item.get_closest_marker(marker):
                item.add_marker(pytest.mark.skip(reason=reason))

    if not torch.cuda.is_available():
        skip("gpu", NO_GPU)
    if os.geteuid() == 0:
        skip("not_root", AS_ROOT)
    if any(item.get_closest_marker("slurm") for item in items):
        from helpers import slurm_available  # asked only when a collected test needs it

        if not slurm_available():
            skip("slurm", NO_SLURM)
    if not shutil.which("chromium"):
        skip("chromium", NO_CHROMIUM)


def _skip_reason(report) -> str:
    """A skipped report's reason: pytest keeps (file, line, "Skipped: <reason>")."""
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        SKIPS.append(_skip_reason(report))


def pytest_collectreport(report):
    if report.skipped:  # a whole module skipped at import
        SKIPS.append(_skip_reason(report))


def _not_allowed() -> list[str]:
    return sorted({r for r in SKIPS if r not in ALLOWED_IN_CI})


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("RAR_CI") and _not_allowed() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Each skip reason with its count, near the end of the output (and into the file named by
    RAR_SKIP_REPORT, which .ci/run prints last); under RAR_CI, why the session failed."""
    counts = collections.Counter(SKIPS)
    lines = [f"{n:4d} skipped: {reason}" for reason, n in sorted(counts.items())]
    lines = lines or ["   0 skipped"]
    strict = bool(os.environ.get("RAR_CI"))
    if strict and _not_allowed():
        lines.append(
            "RAR_CI is set: a test may skip only for want of a GPU or as root; "
            "failing the session for: " + "; ".join(_not_allowed())
        )
    terminalreporter.section("skip reasons")
    for line in lines:
        terminalreporter.line(line, red=line.startswith("RAR_CI"))
    if path := os.environ.get("RAR_SKIP_REPORT"):
        Path(path).write_text("".join(f"{line}\n" for line in ["== skip reasons", *lines]))


@pytest.fixture(scope="session")
def official_tiny():
    """Official outputs for seeded tiny weights (tests/data/README.md)."""
    import torch

    return torch.load(DATA / "official_tiny.pt", weights_only=True)


@pytest.fixture(scope="session")
def official_shapes():
    """Key -> shape of the released state dicts (tests/data/README.md)."""
    import json

    return json.loads((DATA / "official_rar_state_dict_shapes.json").read_text())


@pytest.fixture
def heldout_shards(tmp_path) -> tuple[Path, Path]:
    """A held-out token split as the workflow makes it: the val/ images of a 2-class demo set
    (3 each, 64 px) tokenized with a random tiny MaskGIT-VQGAN (16 tokens, 64 codes) into
    `<tmp>/data/val`. Returns (the image set, the shard folder)."""
    import torch

    from rar.data.tokenize import tokenize_images
    from rar.demo.data import make_demo_dataset
    from rar.model.tokenizer import MaskGITVQGAN, MaskGITVQGANConfig

    images = make_demo_dataset(
        tmp_path / "images", num_classes=2, images_per_class=2, val_per_class=3, image_size=64
    )
    torch.manual_seed(0)
    vq = MaskGITVQGAN(
        MaskGITVQGANConfig(hidden_channels=32, image_size=64, z_channels=32, codebook_size=64)
    ).eval()
    tokenize_images(
        images / "val",
        tmp_path / "data/val",
        tokenizer=vq,
        crop="center",
        images_per_part=4,
        num_workers=0,
        progress=False,
    )
    return images, tmp_path / "data/val"
