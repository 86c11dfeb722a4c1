"""Token batches for training: the interface the loop consumes (`BatchSource`), a data set in
memory (`TensorBatchSource`: tests, rehearsals) and the shards of `rar tokenize`
(`ShardBatchSource`), the check that shards are what a run config says, and `stream_from`,
which starts a chunk's endless stream at any optimizer step (exact resume)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from rar.runtime import derive_seed

if TYPE_CHECKING:
    from rar.settings.training import TrainConfig


class BatchSource(Protocol):
    """Token batches for one pass ("data epoch") over the entries of a data set.

    `batches(epoch=e, rank=r, world_size=w, batch_size=b)` yields `(tokens (b, N) int64,
    labels (b,) int64)`; every rank yields the same number of batches, and together the
    ranks' i-th batches form the i-th global batch. Deterministic in (epoch, rank, world).
    """

    def batches_per_epoch(self, *, world_size: int, batch_size: int) -> int: ...

    def batches(
        self, *, epoch: int, rank: int, world_size: int, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class TensorBatchSource:
    """A data set held in memory: tokens (M, N) and labels (M,); reshuffled each epoch from
    (seed, epoch). Rank r takes the r-th contiguous slice of each global batch."""

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor, *, seed: int = 0) -> None:
        self.tokens, self.labels, self.seed = tokens, labels, seed

    def batches_per_epoch(self, *, world_size: int, batch_size: int) -> int:
        return len(self.tokens) // (world_size * batch_size)

    def batches(self, *, epoch: int, rank: int, world_size: int, batch_size: int):
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        perm = torch.randperm(len(self.tokens), generator=g)
        n = self.batches_per_epoch(world_size=world_size, batch_size=batch_size)
        for idx in perm[: n * world_size * batch_size].view(n, world_size, batch_size)[:, rank]:
            yield self.tokens[idx].long(), self.labels[idx].long()


class ShardBatchSource:
    """Token shards written by `rar tokenize`, read by `rar.data.loader.TokenShards`.

    One data epoch is one pass over the source images (one random crop of each), so data
    epochs and training epochs coincide. Units (chunk x loader worker) split each epoch's
    stream; the tail that does not fill a whole batch on every unit is dropped, so all chunks
    yield the same number of full batches. `workers` is part of the data order.
    """

    def __init__(self, shard_dir: str | Path, *, seed: int, workers: int = 2) -> None:
        from rar.data.loader import TokenShards

        self.dir, self.seed, self.workers = Path(shard_dir), seed, workers
        self._probe = TokenShards(self.dir, batch_size=1, verify="size")
        self.manifest = self._probe.manifest

    def batches_per_epoch(self, *, world_size: int, batch_size: int) -> int:
        from rar.data.loader import TokenShards

        ds = TokenShards(
            self.dir,
            batch_size=batch_size,
            world_size=world_size,
            tail="drop",
            drop_last=True,
            verify="none",
        )
        return ds.batches_per_rank(self.workers)

    def batches(self, *, epoch: int, rank: int, world_size: int, batch_size: int):
        from rar.data.loader import token_loader

        yield from token_loader(
            self.dir,
            batch_size=batch_size,
            num_workers=self.workers,
            seed=self.seed,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
            tail="drop",
            drop_last=True,
            verify="none",
        )


def check_data(cfg: TrainConfig, manifest: dict, where: str) -> None:
    """The shards must be what the run config says it trains on."""
    expected = {
        "num_source_images": cfg.source_images,
        "codebook_size": cfg.codebook_size,
        "num_classes": cfg.num_classes,
        "tokens_per_sample": cfg.num_tokens,
    }
    found = {
        "num_source_images": manifest.get("num_source_images"),
        "codebook_size": manifest.get("tokenizer", {}).get("codebook_size"),
        "num_classes": manifest.get("num_classes"),
        "tokens_per_sample": manifest.get("tokens_per_sample"),
    }
    wrong = [f"{k} {found[k]} (config: {v})" for k, v in expected.items() if found[k] != v]
    if wrong:
        raise ValueError(f"{where}: the shards do not match the run config: {'; '.join(wrong)}")


def stream_from(
    source: BatchSource, *, start_step: int, rank: int, world_size: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches for one chunk of every global batch, starting at optimizer step
    `start_step`: whole data epochs are skipped by arithmetic, the rest by reading."""
    per_epoch = source.batches_per_epoch(world_size=world_size, batch_size=batch_size)
    if per_epoch == 0:
        raise ValueError(
            f"the data set holds less than one global batch ({world_size} x {batch_size})"
        )
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        for i, batch in enumerate(
            source.batches(epoch=epoch, rank=rank, world_size=world_size, batch_size=batch_size)
        ):
            if i >= skip:
                yield batch
        epoch, skip = epoch + 1, 0
