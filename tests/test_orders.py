"""Scan orders (RAR Table 3), shuffling, and the randomness annealing schedule."""

from __future__ import annotations

import pytest
import torch

from rar.orders import (
    SCAN_ORDERS,
    order_generator,
    randomness_ratio,
    sample_orders,
    scan_order,
    shuffle,
    unshuffle,
)


@pytest.mark.parametrize("grid", [4, 8, 16, 32])
@pytest.mark.parametrize("name", SCAN_ORDERS)
def test_scan_orders_are_permutations(name, grid):
    order = scan_order(name, grid)
    assert order.dtype == torch.long
    assert torch.equal(order.sort().values, torch.arange(grid * grid))


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("row-major", [0, 1, 2, 3, 4]),
        ("subsample", [0, 8, 128, 136, 4, 12, 132, 140]),
        ("z-curve", [0, 1, 16, 17, 2, 3, 18, 19]),
        ("spiral-out", [135, 119, 120, 136, 152, 151, 150, 134]),
        ("alternate", [0, 1, 2, 15, 16, 17, 30, 31]),
    ],
)
def test_documented_prefixes_on_16x16(name, prefix):
    order = scan_order(name, 16).tolist()
    if name == "alternate":  # rows 0 and 1: left to right, then right to left
        assert order[:16] == list(range(16))
        assert order[16:32] == list(range(31, 15, -1))
    else:
        assert order[: len(prefix)] == prefix


def test_spiral_out_ends_at_the_last_index_and_spiral_in_reverses_it():
    out = scan_order("spiral-out", 16)
    assert out[-1].item() == 255
    assert torch.equal(scan_order("spiral-in", 16), out.flip(0))


@pytest.mark.parametrize("grid", [4, 8, 16])
def test_spiral_moves_one_cell_at_a_time(grid):
    order = scan_order("spiral-out", grid)
    rows, cols = order // grid, order % grid
    steps = (rows.diff().abs() + cols.diff().abs()).tolist()
    assert set(steps) == {1}


def test_z_curve_visits_2x2_blocks_first():
    order = scan_order("z-curve", 8)
    assert order[:4].tolist() == [0, 1, 8, 9]
    assert order[4:8].tolist() == [2, 3, 10, 11]


@pytest.mark.parametrize("grid", [3, 6, 2])
def test_scan_order_rejects_bad_grids(grid):
    with pytest.raises(ValueError, match="power-of-two"):
        scan_order("row-major", grid)


def test_unknown_scan_order_is_named():
    with pytest.raises(ValueError, match="unknown scan order 'hilbert'"):
        scan_order("hilbert", 16)


def test_shuffle_then_unshuffle_is_the_identity():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, 5, generator=g)
    orders = torch.stack([torch.randperm(16, generator=g) for _ in range(3)])
    shuffled = shuffle(x, orders)
    assert torch.equal(shuffled[1, 4], x[1, orders[1, 4]])
    assert torch.equal(unshuffle(shuffled, orders), x)
    assert torch.equal(unshuffle(shuffle(x[..., 0], orders), orders), x[..., 0])


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(0, 1.0), (199.99, 1.0), (200, 1.0), (250, 0.5), (275, 0.25), (300, 0.0), (400, 0.0)],
)
def test_randomness_ratio_anneals_linearly(epoch, expected):
    assert randomness_ratio(epoch, 200, 300) == pytest.approx(expected)


def test_randomness_ratio_edge_pairs():
    assert randomness_ratio(0, 0, 0) == 0.0  # raster only from the start
    assert randomness_ratio(399.9, 400, 400) == 1.0  # purely random for a 400-epoch run
    assert randomness_ratio(100, 100, 100) == 0.0
    with pytest.raises(ValueError, match="after its end"):
        randomness_ratio(0, 300, 200)


def test_sample_orders_mixes_random_and_target():
    target = scan_order("z-curve", 4)
    orders = sample_orders(2000, 16, 0.3, target, order_generator(0, 5, 0))
    is_target = (orders == target).all(dim=1)
    assert 0.65 < is_target.float().mean() < 0.75
    assert torch.equal(orders.sort(dim=1).values, torch.arange(16).expand(2000, 16))
    assert torch.equal(sample_orders(4, 16, 0.0, target, order_generator(0, 0, 0))[0], target)
    assert not (sample_orders(64, 16, 1.0, target, order_generator(0, 0, 0)) == target).all(1).any()


def test_order_draws_are_reproducible_from_seed_step_rank():
    target = torch.arange(16)
    a = sample_orders(8, 16, 0.5, target, order_generator(7, 123, 1))
    b = sample_orders(8, 16, 0.5, target, order_generator(7, 123, 1))
    assert torch.equal(a, b)
    for other in [(8, 123, 1), (7, 124, 1), (7, 123, 0)]:
        assert not torch.equal(a, sample_orders(8, 16, 0.5, target, order_generator(*other)))
