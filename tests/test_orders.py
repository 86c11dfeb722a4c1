"""Scan orders (RAR Table 3 / supplementary Fig. 6), shuffling, and the randomness annealing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rar.model.orders import (
    SCAN_ORDERS,
    order_generator,
    randomness_ratio,
    sample_orders,
    scan_order,
    shuffle,
    unshuffle,
)

# As tests/conftest.py finds it (not importable here: pytest runs with --import-mode=importlib).
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def paper_orders():
    """The six orders as the paper's Fig. 6 draws them at 16x16 (tests/data/README.md)."""
    return json.loads((DATA / "paper_scan_orders_16.json").read_text())


def inverse(order: torch.Tensor) -> torch.Tensor:
    """Raster index -> visiting step (the number the figure prints in each cell)."""
    step = torch.empty_like(order)
    step[order] = torch.arange(len(order))
    return step


@pytest.mark.parametrize("name", SCAN_ORDERS)
def test_scan_orders_are_the_papers_fig6(paper_orders, name):
    order = scan_order(name, 16)
    assert order.tolist() == paper_orders[name]["order"]
    assert inverse(order).view(16, 16).tolist() == paper_orders[name]["visit_index_grid"]


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
        ("subsample", [0, 8, 128, 136, 1, 9, 129, 137]),
        ("z-curve", [0, 1, 16, 17, 2, 3, 18, 19]),
        ("spiral-out", [120, 136, 135, 119, 103, 104, 105, 121]),  # down, left, up 2, right 2
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


def test_spiral_and_subsample_on_4x4():
    """The generalisation written out by hand: start (g/2 - 1, g/2); quadrant offset g/2."""
    assert scan_order("spiral-out", 4).tolist() == [
        6,
        10,
        9,
        5,
        1,
        2,
        3,
        7,
        11,
        15,
        14,
        13,
        12,
        8,
        4,
        0,
    ]
    assert scan_order("subsample", 4).tolist() == [
        0,
        2,
        8,
        10,
        1,
        3,
        9,
        11,
        4,
        6,
        12,
        14,
        5,
        7,
        13,
        15,
    ]


@pytest.mark.parametrize("grid", [4, 8, 16, 32])
def test_spiral_out_ends_at_the_first_index_and_spiral_in_reverses_it(grid):
    out = scan_order("spiral-out", grid)
    assert out[0].item() == (grid // 2 - 1) * grid + grid // 2
    assert out[-1].item() == 0
    assert torch.equal(scan_order("spiral-in", grid), out.flip(0))


@pytest.mark.parametrize("grid", [4, 8, 16])
def test_spiral_on_g_is_the_centre_of_the_spiral_on_2g(grid):
    """The natural generalisation: the first g*g steps on a 2g grid cover its central g x g
    block, and shifted back they are the spiral on g (so 8x8 is the middle of Fig. 6)."""
    big = scan_order("spiral-out", 2 * grid)[: grid * grid]
    rows, cols = big // (2 * grid) - grid // 2, big % (2 * grid) - grid // 2
    assert torch.equal(rows * grid + cols, scan_order("spiral-out", grid))


@pytest.mark.parametrize("grid", [4, 8, 16])
def test_spiral_moves_one_cell_at_a_time(grid):
    order = scan_order("spiral-out", grid)
    rows, cols = order // grid, order % grid
    steps = (rows.diff().abs() + cols.diff().abs()).tolist()
    assert set(steps) == {1}


@pytest.mark.parametrize("grid", [4, 8, 16])
def test_subsample_visits_one_cell_of_each_quadrant_in_turn(grid):
    """Every group of four is (r, c) of the top-left quadrant (raster order) and its copies
    offset by g/2: right, down, and both."""
    h = grid // 2
    groups = scan_order("subsample", grid).view(-1, 4)  # (g*g/4, 4)
    first = groups[:, 0]
    assert torch.equal(first, torch.arange(h * h) // h * grid + torch.arange(h * h) % h)
    assert torch.equal(
        groups - first[:, None], torch.tensor([0, h, h * grid, h * grid + h]).expand_as(groups)
    )


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
