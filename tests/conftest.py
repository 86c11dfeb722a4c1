"""Shared fixtures. tests/ is not a package (see pyproject.toml): shared fixtures live here,
shared functions in tests/helpers.py (`from helpers import ...`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# cuBLAS reads its workspace setting once, at its first call in the process; a GPU test of
# `deterministic: true` training (rar.runtime.deterministic_algorithms) may come after other
# CUDA work, so the test session fixes it before any.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

# The reference files the parity tests compare against (tests/data/README.md).
DATA = Path(__file__).resolve().parent / "data"


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
    from rar.tokenizer import MaskGITVQGAN, MaskGITVQGANConfig

    images = make_demo_dataset(
        tmp_path / "images", num_classes=2, images_per_class=2, val_per_class=3, image_size=64
    )
    torch.manual_seed(0)
    vq = MaskGITVQGAN(
        MaskGITVQGANConfig(hidden_channels=32, image_size=64, z_channels=32, codebook_size=64)
    ).eval()
    tokenize_images(
        images / "val", tmp_path / "data/val", tokenizer=vq, crop="center", images_per_part=4,
        num_workers=0, progress=False,
    )  # fmt: skip
    return images, tmp_path / "data/val"
