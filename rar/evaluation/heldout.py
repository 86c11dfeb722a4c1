"""Held-out tokens, the validation NLL and sample grids: what a run is watched by while it trains.

The held-out split (docs/operating.md, "Watching a grid"): images no run trains on, tokenized
once per data set into `<data dir>/val/` (token shards and a manifest, as the training shards)
with the ADM center crop (`rar tokenize --crop center`), whatever crop the training shards use:

- ImageNet: the official ILSVRC-2012 validation split (50,000 images, 50 per class, in the
  class-folder layout beside the train split: `resources/imagenet/val/<wnid>/*.JPEG`). Holding
  out part of the train split instead would change the training set, whose 1,281,167 images
  define the paper's epoch and every run.
- The demo: `rar make-demo-data`'s `val/` images (25 per class), which are also the demo's FID
  reference and which no run trains on.

`sequence_nll` is the one NLL of the pipeline (the training loss's formula, with dropout and
label dropout off). rar.training.loop logs its mean every `val_every` epochs in validation.csv, in
the run's sampling order (`val_loss`) and in raster order (`val_nll`, comparable across runs). A
table's `val_nll` column is `heldout_nll`: the same function on the same split for the
evaluated checkpoint, in the order the row samples in (rar.evaluation.scorer `--heldout`), with an
interval over sequences.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rar.data.shards import iter_samples, load_manifest
from rar.files import atomic_write_bytes
from rar.model.orders import sample_orders, scan_order, shuffle
from rar.runtime import autocast

HELDOUT_DIR = "val"  # the held-out shards of a data set: <data dir>/val/
HELDOUT_CROP = "center"  # ADM's center crop, as the FID references
# The sample grid during training: classes spread evenly over the label range (as the sample
# stage's grid.png), a fixed seed, and the ablations' linear guidance (MUSE) at a mid-range
# scale of the paper-study sweep (2 ... 12): a view of progress, not a tuned sample.
GRID_CLASSES, GRID_PER_CLASS = 4, 4
GRID_GUIDANCE_SCALE, GRID_GUIDANCE_SCHEDULE = 4.0, "linear"
# A table's val_nll (`heldout_nll`): the fields it adds to metrics.json, and the seed of the
# permutations of a row that samples in random order (the same for every row and run).
NLL_KEYS = (
    "val_nll",
    "val_nll_ci_low",
    "val_nll_ci_high",
    "val_nll_order",
    "val_nll_sequences",
    "heldout",
)
HELDOUT_SEED = 0


# ##########################################################################################
# The held-out split
# ##########################################################################################


@dataclass(frozen=True)
class HeldOut:
    """A held-out token set in memory, in the shards' (seeded, class-mixed) order."""

    tokens: torch.Tensor  # (M, N) int64 raster codes
    labels: torch.Tensor  # (M,) int64 class ids
    classes: tuple[str, ...]  # the class folder names (ids are their sorted order)
    directory: str


def heldout_dir(data: str, val_data: str = "") -> Path | None:
    """Where a run's held-out shards are: `val_data`, else `<data>/val`; None without either."""
    if val_data:
        return Path(val_data)
    return Path(data) / HELDOUT_DIR if data else None


def load_heldout(directory: str | os.PathLike) -> HeldOut:
    """Every sample of a token shard directory (`rar tokenize` output), in manifest order.

    ShardError (rar.data.shards) naming the directory when its manifest is missing or bad.
    """
    manifest = load_manifest(directory)
    n = int(manifest["tokens_per_sample"])
    tokens, labels = [], []
    for shard in manifest["shards"]:
        data = (Path(directory) / shard["name"]).read_bytes()
        for sample in iter_samples(data):
            arr = np.load(io.BytesIO(sample["tokens.npy"]))
            if arr.shape != (n,):
                raise ValueError(f"{directory}/{shard['name']}: a sample of shape {arr.shape}")
            tokens.append(arr.astype(np.int64))
            labels.append(int(sample["cls"]))
    if not tokens:
        raise ValueError(f"{directory}: the held-out shards hold no samples")
    return HeldOut(
        torch.from_numpy(np.stack(tokens)),
        torch.tensor(labels, dtype=torch.long),
        tuple(manifest["classes"]),
        str(directory),
    )


# ##########################################################################################
# Validation NLL
# ##########################################################################################


def sampling_order(anneal_start: float, epochs: float, target_order: str) -> str:
    """The order a run generates in: its target scan order, or "random" for a run that never
    anneals (anneal start at its last epoch: RAR Table 2's purely random row)."""
    return "random" if anneal_start >= epochs else target_order


def heldout_orders(order: str, num: int, grid: int, *, seed: int) -> torch.Tensor:
    """(num, grid^2) orders for a held-out set: a scan order for every sample, or for "random"
    one fixed permutation per sample drawn from `seed`, so every validation of a run (and every
    run with that seed) sees the same orders."""
    n = grid * grid
    if order == "random":
        g = torch.Generator().manual_seed(seed)
        return sample_orders(num, n, 1.0, torch.arange(n), g)
    return scan_order(order, grid).expand(num, n).clone()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off for the duration, then the model's previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def sequence_nll(
    model: nn.Module,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    orders: torch.Tensor,
    *,
    batch_size: int = 256,
    amp: torch.dtype | None = None,
) -> torch.Tensor:
    """(M,) float64: each sequence's mean per-token negative log-likelihood (nats) of `tokens`
    visited in `orders`, with dropout off: the training loss's formula
    (rar.training.loop.loss_and_accuracy) on true labels.

    model: a RAR on its device; tokens: (M, N) raster codes; labels: (M,) class ids (no label
    dropout); orders: (M, N) visiting orders (`heldout_orders`). The model's train/eval mode is
    restored on return. `amp`: the autocast dtype the run trains with (None: full precision).
    """
    device = next(model.parameters()).device
    out = []
    with eval_mode(model):
        for i in range(0, len(tokens), batch_size):
            x = tokens[i : i + batch_size].to(device)  # (b, N)
            y, o = labels[i : i + batch_size].to(device), orders[i : i + batch_size].to(device)
            with autocast(device, amp):
                logits = model(x, y, o)  # (b, N, codebook)
            targets = shuffle(x, o)  # logits[:, k] predicts the k-th token visited
            nll = F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")
            out.append(nll.double().mean(1).cpu())  # (b,)
    return torch.cat(out)


def nll_sum(
    model: nn.Module, tokens: torch.Tensor, labels: torch.Tensor, orders: torch.Tensor, **options
) -> tuple[float, int]:
    """Summed per-token NLL (nats) and the number of tokens: `validation_nll`'s parts, for
    callers that add them up over processes. Arguments and `options` (batch_size, amp):
    `sequence_nll`'s."""
    per_sequence = sequence_nll(model, tokens, labels, orders, **options)  # (M,)
    n = tokens.shape[1]  # every sequence has N tokens
    return float(per_sequence.sum() * n), per_sequence.numel() * n


def validation_nll(
    model: nn.Module, tokens: torch.Tensor, labels: torch.Tensor, orders: torch.Tensor, **options
) -> float:
    """Mean per-token negative log-likelihood (nats) over every token of `tokens`: the mean
    of `sequence_nll`, with its arguments and `options` (batch_size, amp)."""
    total, count = nll_sum(model, tokens, labels, orders, **options)
    return total / count


# ##########################################################################################
# Sample grids
# ##########################################################################################


def grid_classes(num_classes: int, k: int = GRID_CLASSES) -> list[int]:
    """k classes spread evenly over the label range (as the sample stage's grid.png)."""
    return sorted({int(c) for c in np.linspace(0, num_classes - 1, min(k, num_classes))})


@torch.no_grad()
def sample_grid(
    model: nn.Module,
    tokenizer,
    *,
    num_classes: int,
    order: str,
    seed: int,
    per_class: int = GRID_PER_CLASS,
    amp: torch.dtype | None = None,
) -> np.ndarray:
    """A fixed-seed grid of generated images: one row per class of `grid_classes`, `per_class`
    samples each -> (rows * H, per_class * W, 3) uint8. The same checkpoint gives the same grid.

    tokenizer: decodes (B, N) codes to (B, 3, H, W) images in [0, 1]
    (rar.model.tokenizer.Tokenizer); order: a scan order, or "random" (`sampling_order`).
    """
    from rar.model.generate import generate, release_engine
    from rar.model.tokenizer import decode_to_uint8
    from rar.settings.stages import SamplingConfig

    device = next(model.parameters()).device
    classes = grid_classes(num_classes)
    labels = torch.tensor(classes, device=device).repeat_interleave(per_class)  # (rows*cols,)
    g = torch.Generator(device=device).manual_seed(seed)
    with eval_mode(model):
        sampling = SamplingConfig(
            guidance_scale=GRID_GUIDANCE_SCALE,
            guidance_power=1.0,
            guidance_schedule=GRID_GUIDANCE_SCHEDULE,
            temperature=1.0,
            order=order,
        )
        ids = generate(model, labels, sampling, generator=g, amp_dtype=amp)
    release_engine(model)  # the grid's KV cache must not hold memory through training
    tokenizer_device = next(tokenizer.parameters()).device
    images = decode_to_uint8(tokenizer, ids.to(tokenizer_device)).numpy()  # (B, H, W, 3)
    _, H, W, _ = images.shape
    rows = images.reshape(len(classes), per_class, H, W, 3)
    return rows.transpose(0, 2, 1, 3, 4).reshape(len(classes) * H, per_class * W, 3)


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """image: (H, W, 3) uint8 -> a PNG file, written atomically (PIL, a pipeline dependency)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


# ##########################################################################################
# A table's val_nll: a checkpoint's held-out NLL in the order it samples in
# ##########################################################################################


def heldout_nll(
    model: nn.Module,
    heldout: HeldOut,
    order: str,
    *,
    seed: int,
    batch_size: int = 256,
) -> dict:
    """The tables' `val_nll`: the held-out NLL per token of `model` visiting each sequence in
    `order` (a scan order, or "random": one permutation per sequence from `seed`, as
    `heldout_orders`), with a 95% interval over sequences (mean +- 1.96 standard errors of
    the per-sequence means; sequences are the independent units, tokens are not).

    Returns {val_nll, val_nll_ci_low, val_nll_ci_high, val_nll_order, val_nll_sequences,
    heldout} for metrics.json."""
    n, m = heldout.tokens.shape[1], len(heldout.tokens)
    grid = math.isqrt(n)
    orders = heldout_orders(order, m, grid, seed=seed)
    per_sequence = sequence_nll(
        model, heldout.tokens, heldout.labels, orders, batch_size=batch_size
    )
    mean = float(per_sequence.mean())
    se = float(per_sequence.std(unbiased=True)) / math.sqrt(m) if m > 1 else float("nan")
    half = 1.96 * se if math.isfinite(se) else None
    return {
        "val_nll": mean,
        "val_nll_ci_low": mean - half if half is not None else None,
        "val_nll_ci_high": mean + half if half is not None else None,
        "val_nll_order": order,
        "val_nll_sequences": m,
        "heldout": heldout.directory,
    }
