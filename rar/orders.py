"""Token orders: the six scan orders of RAR Table 3, random permutations, and the annealing.

Convention throughout: an order is a permutation `orders` of range(N) where `orders[k]` is the
raster index (row * grid + col) of the k-th token visited.

RAR §3.2: during training each sequence is permuted at random with probability r, and r
anneals linearly from 1 to 0 between an anneal start and end epoch. Table 3 trains models that
converge to other scan orders than raster; those orders are defined as in Taming Transformers
(Esser et al., `taming/modules/transformer/permuter.py`), which the paper follows.
"""

from __future__ import annotations

import numpy as np
import torch

SCAN_ORDERS = ("row-major", "spiral-in", "spiral-out", "z-curve", "subsample", "alternate")


# ##########################################################################################
# Scan orders
# ##########################################################################################


def _check_grid(grid: int) -> None:
    if grid < 4 or grid & (grid - 1):
        raise ValueError(f"scan orders need a power-of-two grid side >= 4, got {grid}")


def _subsample(grid: int) -> np.ndarray:
    """Coarse to fine: repeated 2x2 space-to-depth. The parity split made first becomes the
    most significant digit of the visiting index, so the first four visits are the corners of
    the coarsest lattice (0, g/2, g/2*g, ...)."""
    idx = np.arange(grid * grid).reshape(1, grid, grid)
    while idx.shape[1] > 1:
        c, h, w = idx.shape
        idx = idx.reshape(c, h // 2, 2, w // 2, 2).transpose(0, 2, 4, 1, 3)  # (c, 2, 2, h/2, w/2)
        idx = idx.reshape(c * 4, h // 2, w // 2)
    return idx.ravel()


def _z_curve(grid: int) -> np.ndarray:
    """Morton order: interleave the bits of (row, col), the column bit lowest."""
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    code = np.zeros(grid * grid, dtype=np.int64)
    for bit in range(int(grid).bit_length()):
        code |= ((cols >> bit) & 1) << (2 * bit)
        code |= ((rows >> bit) & 1) << (2 * bit + 1)
    return np.argsort(code, kind="stable")


def _spiral_out(grid: int) -> np.ndarray:
    """From the centre (row g/2, col g/2 - 1) outwards: up, right, down, left with legs of
    1, 1, 2, 2, 3, 3, ...; the last leg is one step short and ends at the last index."""
    r, c = grid // 2, grid // 2 - 1
    path = [r * grid + c]
    moves = [(-1, 0), (0, 1), (1, 0), (0, -1)]  # up, right, down, left
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
