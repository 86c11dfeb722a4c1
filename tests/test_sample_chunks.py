"""rar.sampling.chunks: the class-interleaved label layout, chunk arithmetic for any world
size, per-chunk seeds, the grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rar.sampling.chunks import (
    chunk_bounds,
    chunk_generator,
    chunk_seed,
    chunks_of_rank,
    class_labels,
    label_block,
    num_chunks,
    save_grid,
)


def test_labels_are_class_interleaved_in_a_seeded_order():
    labels = class_labels(1000, 50, seed=0)
    assert labels.shape == (50_000,) and labels.dtype == np.int64
    assert (np.bincount(labels) == 50).all()
    blocks = labels.reshape(-1, 1000)  # every block holds each class exactly once
    assert (np.sort(blocks, axis=1) == np.arange(1000)).all()
    # ADM's IS splits (5,000 consecutive images, unshuffled) each hold every class 5 times.
    assert (np.bincount(labels[5_000:10_000], minlength=1000) == 5).all()
    assert np.array_equal(labels, class_labels(1000, 50, seed=0))
    assert not np.array_equal(labels, class_labels(1000, 50, seed=1))
    # Block b depends only on (seed, b): not on how many blocks there are; blocks differ.
    assert np.array_equal(class_labels(1000, 3, seed=0), labels[:3000])
    assert np.array_equal(label_block(0, 7, 1000), labels[7000:8000])
    assert not np.array_equal(labels[:1000], labels[1000:2000])
    assert not np.array_equal(labels[:1000], np.arange(1000))  # a permutation, not 0..999
    with pytest.raises(ValueError):
        class_labels(0, 50, seed=0)


@pytest.mark.parametrize("n,size", [(50_000, 125), (10, 3), (7, 7), (1, 4)])
def test_chunks_cover_every_image_once_for_any_world_size(n, size):
    total = num_chunks(n, size)
    covered = [i for c in range(total) for i in range(*chunk_bounds(c, n, size))]
    assert covered == list(range(n))
    for world in (1, 2, 3, 8):
        shards = [chunks_of_rank(total, r, world) for r in range(world)]
        assert sorted(c for s in shards for c in s) == list(range(total))
        assert all(c % world == r for r, s in enumerate(shards) for c in s)
    with pytest.raises(IndexError):
        chunk_bounds(total, n, size)


def test_chunk_seeds_are_deterministic_and_distinct():
    seeds = {chunk_seed(s, i) for s in range(3) for i in range(100)}
    assert len(seeds) == 300
    assert chunk_seed(0, 5) == chunk_seed(0, 5) and 0 <= chunk_seed(0, 5) < 2**64
    a = torch.rand(4, generator=chunk_generator(1, 2, "cpu"))
    b = torch.rand(4, generator=chunk_generator(1, 2, "cpu"))
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.rand(4, generator=chunk_generator(1, 3, "cpu")))


def test_grid_rows_are_classes_picked_by_label(tmp_path):
    """Whatever the file's order, grid row r shows only class r's images."""
    from PIL import Image

    labels = class_labels(4, 3, seed=0)
    images = np.zeros((12, 2, 2, 3), np.uint8) + (60 * labels[:, None, None, None]).astype(np.uint8)
    shown = save_grid(images, labels, tmp_path / "grid.png", num_classes=4, per_class=2)
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert shown == [0, 1, 2, 3] and grid.shape == (4 * 2, 2 * 2, 3)
    for r, c in enumerate(shown):
        assert (grid[r * 2 : (r + 1) * 2] == 60 * c).all()
