"""Streaming token loader for training over WebDataset shards, with WebDataset's shuffle buffer.

Who reads what is an explicit, pure function (`epoch_segments`) of (seed, epoch, rank,
world size, worker, number of workers), not WebDataset's environment-variable detection:

1. The epoch's shard order is a permutation seeded by (seed, epoch).
2. Concatenated in that order, the shards form one stream of *items*. An item is one source
   image (its `samples_per_image` consecutive crops, of which one is picked at random:
   `crops="random"`, the default) or one stored sample (`crops="all"`). So with
   `crops="random"` an epoch is one pass over the source images whatever the augmentation.
3. The stream is cut into `world_size * num_workers` equal contiguous slices; unit
   `rank * num_workers + worker` reads its slice (a few whole shards plus at most two partial
   ones), so there may be fewer shards than units.
4. Tail: `tail="pad"` (default) makes slices `ceil(items / units)` long, wrapping around to the
   start of the epoch's stream (like DistributedSampler), so every item is read at least once
   and at most `units - 1` items twice; `tail="drop"` uses `floor` and skips the last
   `items mod units` items of the epoch's stream (different ones each epoch).
5. Each unit shuffles its slice with a WebDataset shuffle buffer whose RNG is seeded by
   (seed, epoch, unit, units), and batches it itself.

Every unit therefore yields the same number of items, and every rank the same number of
batches (`batches_per_rank`): DDP ranks never wait for each other at an epoch's end. Resuming
at an epoch boundary with the same (seed, rank, world size, num_workers) replays the same
batches in the same order; the DataLoader interleaves its workers' batches round-robin.

Shards are parsed by `rar.data.shards.iter_samples` (the same grouping as WebDataset's
`group_by_keys`, ~10x faster than `tarfile`); any WebDataset reader can read them too.
"""

from __future__ import annotations

import bisect
import io
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from rar.data.shards import (
    MANIFEST,
    ShardError,
    iter_samples,
    load_manifest,
    sha256_file,
    shard_problem_message,
)

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------
# assignment (pure functions)
# ------------------------------------------------------------------------------------------


def shard_order(num_shards: int, *, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The epoch's shard order: a permutation seeded by (seed, epoch), or 0..S-1."""
    if not shuffle:
        return list(range(num_shards))
    return np.random.default_rng([seed, epoch]).permutation(num_shards).tolist()


def items_per_unit(num_items: int, num_units: int, *, tail: str = "pad") -> int:
    """Items each (rank, worker) unit reads per epoch."""
    if tail == "pad":
        return math.ceil(num_items / num_units)
    if tail == "drop":
        return num_items // num_units
    raise ValueError(f"tail must be 'pad' or 'drop', got {tail!r}")


def epoch_segments(
    items_per_shard: Sequence[int],
    *,
    seed: int,
    epoch: int,
    unit: int,
    num_units: int,
    tail: str = "pad",
    shuffle: bool = True,
) -> list[tuple[int, int, int]]:
    """What unit `unit` of `num_units` reads in an epoch: `(shard, start, stop)` item ranges
    within shards, in reading order. `unit = rank * num_workers + worker`,
    `num_units = world_size * num_workers`. See the module docstring for the rules."""
    if not 0 <= unit < num_units:
        raise ValueError(f"unit {unit} out of range for {num_units} units")
    order = shard_order(len(items_per_shard), seed=seed, epoch=epoch, shuffle=shuffle)
    counts = [items_per_shard[s] for s in order]
    ends = np.cumsum(counts).tolist()  # stream position where each ordered shard ends
    total = ends[-1] if ends else 0
    if total == 0:
        raise ValueError("the shards hold no samples")
    n = items_per_unit(total, num_units, tail=tail)
    pos, stop = unit * n, (unit + 1) * n
    segments: list[tuple[int, int, int]] = []
    while pos < stop:
        p = pos % total  # wrap-around only happens with tail="pad"
        j = bisect.bisect_right(ends, p)  # ordered shard holding stream position p
        begin = ends[j] - counts[j]
        take = min(ends[j] - p, stop - pos)
        segments.append((order[j], p - begin, p - begin + take))
        pos += take
    return segments


# ------------------------------------------------------------------------------------------
# reading shards
# ------------------------------------------------------------------------------------------


def _tokens_from_npy(data: bytes, n: int) -> np.ndarray:
    # np.save writes the (n,) uint16 array as the file's last 2n bytes; skip np.load's header
    # parsing (the first sample of each shard is checked with np.load).
    return np.frombuffer(data, dtype="<u2", count=n, offset=len(data) - 2 * n)


class TokenShards(torch.utils.data.IterableDataset):
    """Batches of `(tokens (B, N) int64, labels (B,) int64)` from a token shard directory.

    One instance per rank; wrap it in a DataLoader with `batch_size=None` (batches are built
    in the workers), or use `token_loader`. Call `set_epoch(e)` before each epoch (with
    non-persistent workers, the default, each epoch's workers get the new value).

    shard_dir: a directory written by `rar tokenize` (manifest.json + train-*.tar).
    crops: 'random' (one random crop per source image per epoch) or 'all' (every sample).
    tail: 'pad' or 'drop' (module docstring). drop_last: drop each worker's short last batch.
    verify: 'size' (compare file sizes with the manifest at start-up), 'sha256' (also hash
        every shard: slow for big data; `rar verify-shards` does it once) or 'none'.
    with_keys: also yield the list of sample keys as a third batch element (tests, debugging).
    """

    def __init__(
        self,
        shard_dir: str | os.PathLike,
        *,
        batch_size: int,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        shuffle_buffer: int = 10_000,
        crops: str = "random",
        tail: str = "pad",
        drop_last: bool = False,
        verify: str = "size",
        with_keys: bool = False,
    ):
        super().__init__()
        if crops not in ("random", "all"):
            raise ValueError(f"crops must be 'random' or 'all', got {crops!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        self.dir = Path(shard_dir)
        self.manifest = load_manifest(self.dir)
        self.batch_size, self.seed, self.epoch = batch_size, seed, epoch
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        self.crops, self.tail, self.drop_last = crops, tail, drop_last
        self.with_keys = with_keys
        self.shards = self.manifest["shards"]
        self.group = self.manifest["samples_per_image"] if crops == "random" else 1
        self.tokens_per_sample = self.manifest["tokens_per_sample"]
        self.items_per_shard = [s["num_samples"] // self.group for s in self.shards]
        self.num_items = sum(self.items_per_shard)
        if self.num_items == 0:
            raise ShardError(f"{self.dir / MANIFEST}: lists no samples")
        self._check(verify)

    # -- bookkeeping -----------------------------------------------------------------------

    def _problem(self, name: str, problem: str) -> ShardError:
        return ShardError(shard_problem_message(self.dir, name, problem, self.manifest))

    def _check(self, verify: str) -> None:
        if verify not in ("none", "size", "sha256"):
            raise ValueError(f"verify must be 'none', 'size' or 'sha256', got {verify!r}")
        if verify == "none":
            return
        for s in self.shards:
            path = self.dir / s["name"]
            if not path.exists():
                raise self._problem(s["name"], "missing")
            size = path.stat().st_size
            if size != s["size"]:
                raise self._problem(s["name"], f"size {size} bytes, manifest says {s['size']}")
            if verify == "sha256" and sha256_file(path) != s["sha256"]:
                raise self._problem(s["name"], "sha256 differs from the manifest (corrupt)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_classes(self) -> int:
        return self.manifest["num_classes"]

    def items_per_worker(self, num_workers: int) -> int:
        """Items (source images with crops='random') each worker of each rank reads per epoch."""
        return items_per_unit(self.num_items, self.world_size * max(num_workers, 1), tail=self.tail)

    def batches_per_rank(self, num_workers: int) -> int:
        """Batches every rank yields per epoch (the same on all ranks)."""
        n = self.items_per_worker(num_workers)
        per_worker = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return max(num_workers, 1) * per_worker

    # -- iteration -------------------------------------------------------------------------

    def __iter__(self) -> Iterator:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.iter_unit(worker=worker, num_workers=num_workers)

    def iter_unit(self, *, worker: int, num_workers: int) -> Iterator:
        """The batches of one (rank, worker) unit for the current epoch: deterministic."""
        unit, units = self.rank * num_workers + worker, self.world_size * num_workers
        segments = epoch_segments(
            self.items_per_shard,
            seed=self.seed,
            epoch=self.epoch,
            unit=unit,
            num_units=units,
            tail=self.tail,
            shuffle=self.shuffle,
        )
        ss = np.random.SeedSequence([self.seed, self.epoch, unit, units])
        rng = random.Random(int(ss.generate_state(1)[0]))
        items = self._items(segments, rng)
        if self.shuffle and self.shuffle_buffer > 1:
            items = wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=rng)(items)
        batch: list = []
        for item in items:
            batch.append(item)
            if len(batch) == self.batch_size:
                yield self._collate(batch)
                batch = []
        if batch and not self.drop_last:
            yield self._collate(batch)

    def _collate(self, batch: list) -> tuple:
        tokens = torch.from_numpy(np.stack([b[0] for b in batch]).astype(np.int64))  # (B, N)
        labels = torch.tensor([b[1] for b in batch], dtype=torch.int64)  # (B,)
        if self.with_keys:
            return tokens, labels, [b[2] for b in batch]
        return tokens, labels

    def _items(self, segments: list[tuple[int, int, int]], rng: random.Random) -> Iterator:
        """(tokens (N,) uint16, label, key) per item, reading the segments in order."""
        g, n = self.group, self.tokens_per_sample
        for shard, start, stop in segments:
            for group in self._read_groups(shard, start, stop):
                sample = group[rng.randrange(g)] if g > 1 else group[0]
                tokens = _tokens_from_npy(sample["tokens.npy"], n)
                yield tokens, int(sample["cls"]), sample["__key__"]

    def _read_groups(self, shard: int, start: int, stop: int) -> Iterator[list[dict]]:
        """Items `start..stop-1` of a shard, each a list of `group` raw WebDataset samples
        (dicts of bytes; only the picked one is decoded); ShardError (naming
        the shard and the re-create command) when the tar is unreadable or too short."""
        name, g, n = self.shards[shard]["name"], self.group, self.tokens_per_sample
        path = self.dir / name
        want, got, group = (stop - start) * g, 0, []
        try:
            with open(path, "rb") as f:
                data = f.read()
            for i, sample in enumerate(iter_samples(data)):
                if i < start * g:
                    continue  # before this unit's slice (the shard is shared)
                if got == 0:  # check the first sample's array fully, then trust the layout
                    arr = np.load(io.BytesIO(sample["tokens.npy"]))
                    if arr.dtype != np.uint16 or arr.shape != (n,):
                        raise ValueError(f"tokens {arr.dtype}{arr.shape}, want uint16 ({n},)")
                if "cls" not in sample or "tokens.npy" not in sample:
                    raise KeyError(f"sample {sample['__key__']} lacks .cls or .tokens.npy")
                group.append(sample)
                got += 1
                if len(group) == g:
                    yield group
                    group = []
                if got == want:
                    return
        except (OSError, KeyError, ValueError, UnicodeDecodeError) as err:
            raise self._problem(name, f"unreadable ({type(err).__name__}: {err})") from err
        expected = self.shards[shard]["num_samples"]
        raise self._problem(name, f"ends after {start * g + got} samples, manifest says {expected}")


def token_loader(
    shard_dir: str | os.PathLike,
    *,
    batch_size: int,
    num_workers: int = 2,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    shuffle_buffer: int = 10_000,
    crops: str = "random",
    tail: str = "pad",
    drop_last: bool = False,
    verify: str = "size",
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader over `TokenShards` for one rank and one epoch: yields
    `(tokens (B, N) int64, labels (B,) int64)`; `len()` is `batches_per_rank(num_workers)`.
    Make a new one per epoch (cheap) or call `loader.dataset.set_epoch(e)` between epochs."""
    ds = TokenShards(
        shard_dir,
        batch_size=batch_size,
        seed=seed,
        epoch=epoch,
        rank=rank,
        world_size=world_size,
        shuffle_buffer=shuffle_buffer,
        crops=crops,
        tail=tail,
        drop_last=drop_last,
        verify=verify,
    )
    return _SizedLoader(
        ds,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,  # workers must see set_epoch
    )


class _SizedLoader(torch.utils.data.DataLoader):
    def __len__(self) -> int:
        return self.dataset.batches_per_rank(self.num_workers)


# ------------------------------------------------------------------------------------------
# benchmark
# ------------------------------------------------------------------------------------------


def benchmark_loader(
    shard_dir: str | os.PathLike,
    *,
    batch_size: int = 256,
    workers: int = 2,
    seconds: float = 10.0,
    crops: str = "random",
) -> dict:
    """Read batches for about `seconds` (after one warm-up batch, gpt-fast style) and report
    samples/s. Loops over epochs if the data is small. Prints and returns a dict."""
    n_samples = n_batches = 0
    epoch = 0
    t0 = None
    while True:
        loader = token_loader(
            shard_dir, batch_size=batch_size, num_workers=workers, epoch=epoch, crops=crops
        )
        for tokens, _labels in loader:
            if t0 is None:  # warm-up batch: worker start-up and first shard open
                t0 = time.perf_counter()
                continue
            n_samples += tokens.shape[0]
            n_batches += 1
            if time.perf_counter() - t0 >= seconds:
                break
        epoch += 1
        if t0 is not None and time.perf_counter() - t0 >= seconds:
            break
    dt = time.perf_counter() - t0
    result = {
        "shard_dir": str(shard_dir),
        "batch_size": batch_size,
        "workers": workers,
        "crops": crops,
        "seconds": round(dt, 3),
        "batches": n_batches,
        "samples": n_samples,
        "epochs_started": epoch,
        "samples_per_s": round(n_samples / dt, 1),
        "cpu_count": os.cpu_count(),
    }
    print(
        f"loader: {result['samples_per_s']:.0f} samples/s ({n_batches} batches of {batch_size}, "
        f"{workers} workers, {dt:.1f} s, {os.cpu_count()} CPUs)",
        flush=True,
    )
    return result
