"""Shared fixtures. tests/ is not a package (see pyproject.toml): import helpers from here."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The steering repo's shared/ folder sits beside the checkout (and beside CI's fresh clone).
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference"


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def official_tiny():
    """Official outputs for seeded tiny weights (shared/reference/README.md), or skip."""
    import torch

    path = REFERENCE / "official_tiny.pt"
    if not path.exists():
        pytest.skip(f"{path} not found (the shared/ folder is absent)")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="session")
def official_shapes():
    """Key -> shape of the released state dicts (shared/reference/README.md), or skip."""
    import json

    path = REFERENCE / "official_rar_state_dict_shapes.json"
    if not path.exists():
        pytest.skip(f"{path} not found (the shared/ folder is absent)")
    return json.loads(path.read_text())
