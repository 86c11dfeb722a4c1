"""Token orders: the six scan orders of RAR Table 3, random permutations, and the annealing.

Convention throughout: an order is a permutation `orders` of range(N) where `orders[k]` is the
raster index (row * grid + col) of the k-th token visited.

RAR §3.2: during training each sequence is permuted at random with probability r, and r
anneals linearly from 1 to 0 between an anneal start and end epoch. Table 3 trains models that
converge to other scan orders than raster. Those orders are the ones the paper's supplementary
Fig. 6 draws on the 16x16 grid (tests/data/paper_scan_orders_16.json holds them cell by
cell, and the tests check every entry). Row-major, z-curve and alternate agree with Taming
Transformers (Esser et al., `taming/modules/transformer/permuter.py`); the other three do not:

- spiral-out starts next to the centre, at (row 7, col 8) = raster 120, and moves down, left,
  up, right with legs 1, 1, 2, 2, 3, 3, ... (Taming's spiral is this one turned by 180 degrees:
  it starts at raster 135 and moves up);
- spiral-in is spiral-out reversed;
- subsample is one level of 2x2 space-to-depth: for each cell (r, c) of the top-left 8x8
  quadrant in raster order it visits (r, c), (r, c+8), (r+8, c), (r+8, c+8), i.e. 0, 8, 128,
  136, 1, 9, 129, 137, ... (Taming's subsample recurses, coarse to fine: 0, 8, 128, 136, 4, ...).

On any power-of-two grid g >= 4 (the offline demo uses 8x8, the tests 4x4) the same rules
apply with 8 -> g/2: spiral-out starts at (g/2 - 1, g/2) and ends at (0, 0), and the spiral on
g is the first g*g steps of the spiral on 2g, shifted into the central g x g block; subsample
pairs each cell of the top-left g/2 x g/2 quadrant with its three copies offset by g/2.
Taming's variants are not offered: no table of the paper uses them, and a second pair of
spirals would invite training with the wrong one (Taming's spiral is `g*g - 1 - spiral-out`).
"""

from __future__ import annotations

import numpy as np
import torch

from rar.settings.presets import SCAN_ORDERS  # the names, torch-free (the workflow reads them)

# ##########################################################################################
# Scan orders (RAR Table 3, as drawn in the paper's supplementary Fig. 6)
# ##########################################################################################


def _check_grid(grid: int) -> None:
    if grid < 4 or grid & (grid - 1):
        raise ValueError(f"scan orders need a power-of-two grid side >= 4, got {grid}")


def _subsample(grid: int) -> np.ndarray:
    """One level of 2x2 space-to-depth (RAR Fig. 6): for each cell (r, c) of the top-left
    g/2 x g/2 quadrant in raster order, visit (r, c), (r, c + g/2), (r + g/2, c),
    (r + g/2, c + g/2)."""
    h = grid // 2
    idx = np.arange(grid * grid).reshape(2, h, 2, h)  # (quadrant row, r, quadrant col, c)
    return idx.transpose(1, 3, 0, 2).ravel()  # (r, c, quadrant row, quadrant col)


def _z_curve(grid: int) -> np.ndarray:
    """Morton order: interleave the bits of (row, col), the column bit lowest."""
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    code = np.zeros(grid * grid, dtype=np.int64)
    for bit in range(int(grid).bit_length()):
        code |= ((cols >> bit) & 1) << (2 * bit)
        code |= ((rows >> bit) & 1) << (2 * bit + 1)
    return np.argsort(code, kind="stable")


def _spiral_out(grid: int) -> np.ndarray:
    """From next to the centre (row g/2 - 1, col g/2) outwards (RAR Fig. 6): down, left, up,
    right with legs of 1, 1, 2, 2, 3, 3, ...; the last leg (up the first column) is one step
    short and ends at raster index 0."""
    r, c = grid // 2 - 1, grid // 2
    path = [r * grid + c]
    moves = [(1, 0), (0, -1), (-1, 0), (0, 1)]  # down, left, up, right
    leg, turn = 1, 0
    while len(path) < grid * grid:
        for _ in range(2):  # two legs of each length
            dr, dc = moves[turn % 4]
            for _ in range(leg):
                if len(path) == grid * grid:
                    break
                r, c = r + dr, c + dc
                path.append(r * grid + c)
            turn += 1
        leg += 1
    return np.asarray(path)


def _alternate(grid: int) -> np.ndarray:
    """Boustrophedon: even rows left to right, odd rows right to left."""
    idx = np.arange(grid * grid).reshape(grid, grid)
    idx[1::2] = idx[1::2, ::-1]
    return idx.ravel()


def scan_order(name: str, grid: int) -> torch.Tensor:
    """The scan order `name` on a `grid` x `grid` token grid -> LongTensor (grid * grid,).

    name: one of SCAN_ORDERS ("row-major", "spiral-in", "spiral-out", "z-curve",
        "subsample", "alternate"); grid: power of two, >= 4.
    """
    _check_grid(grid)
    builders = {
        "row-major": lambda g: np.arange(g * g),
        "spiral-out": _spiral_out,
        "spiral-in": lambda g: _spiral_out(g)[::-1].copy(),  # exactly spiral-out reversed
        "z-curve": _z_curve,
        "subsample": _subsample,
        "alternate": _alternate,
    }
    if name not in builders:
        raise ValueError(f"unknown scan order {name!r}; known: {', '.join(SCAN_ORDERS)}")
    return torch.as_tensor(builders[name](grid), dtype=torch.long)


def shuffle(x: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """Raster layout -> visiting order. x: (B, N, ...), orders: (B, N) -> (B, N, ...)."""
    index = orders.view(*orders.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


def unshuffle(x: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """Visiting order -> raster layout; the inverse of `shuffle`."""
    index = orders.view(*orders.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return torch.empty_like(x).scatter_(1, index, x)


# ##########################################################################################
# Randomness annealing (RAR §3.2)
# ##########################################################################################


def randomness_ratio(epoch: float, start: float, end: float) -> float:
    """Probability r that a training sequence is randomly permuted at (fractional) `epoch`.

    RAR §3.2: r = 1 before the anneal start, 0 from the end on, linear in between. With
    start == end the switch is a step at that epoch: (0, 0) trains raster only, and
    (E, E) with E = total epochs is purely random training.
    """
    if start > end:
        raise ValueError(f"anneal start {start} is after its end {end}")
    if epoch < start:
        return 1.0
    if epoch >= end:
        return 0.0
    return 1.0 - (epoch - start) / (end - start)


def order_generator(seed: int, step: int, rank: int, device="cpu") -> torch.Generator:
    """A generator for the order draws of one optimizer step on one rank, seeded from
    (seed, step, rank) alone, so a resumed run draws exactly the orders it would have drawn."""
    state = np.random.SeedSequence([seed, step, rank]).generate_state(2, dtype=np.uint32)
    g = torch.Generator(device=device)
    g.manual_seed(int(state[0]) << 32 | int(state[1]))
    return g


def sample_orders(
    batch_size: int,
    num_tokens: int,
    ratio: float,
    target: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Training orders for one batch -> (B, N) LongTensor.

    Each sample independently takes a uniformly random permutation with probability `ratio`,
    otherwise the run's target scan order `target` (N,) (raster for the paper's main runs;
    Table 3's runs converge to other scan orders). All draws come from `generator`, on its
    device.
    """
    device = generator.device
    coins = torch.rand(batch_size, generator=generator, device=device) < ratio  # (B,)
    keys = torch.rand(batch_size, num_tokens, generator=generator, device=device)
    random_perms = keys.argsort(dim=1)  # (B, N) uniform permutations
    target = target.to(device).expand(batch_size, num_tokens)
    return torch.where(coins[:, None], random_perms, target)
