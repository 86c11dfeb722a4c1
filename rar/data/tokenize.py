"""`rar tokenize`: images -> VQ token shards, in independent, resumable parts.

The official release (bytedance/1d-tokenizer `scripts/pretokenization.py`) holds a whole rank's
output in one Python list and writes one 12.8M-line JSONL. Here the source files are split
into parts of `images_per_part` files; a part is a pure function of (file listing, shuffle
seed, part size), so any job can take any part (a SLURM array task, one GPU, one Snakemake
job) and a rerun skips parts whose shard and sidecar exist and verify. The listing is
shuffled once with `shuffle_seed` before splitting, so every shard mixes all classes and a
streaming loader's shuffle buffer sees class-balanced data. The parts, their sidecars and the
manifest merged from them live in rar.data.parts.

Byte-identical resume: a part's batches never cross part boundaries, so a part is encoded
with the same batch composition whichever other parts a job runs; on CPU this makes a resumed
run byte-identical to an uninterrupted one. On GPU it is too as long as the encoder's kernels
are deterministic (cuDNN may pick different convolution algorithms between runs; set
`torch.backends.cudnn.deterministic = True` in the calling entry point if that matters).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rar.data.images import (
    CROP_MODES,
    CROPS_PER_IMAGE,
    SourceImage,
    list_images,
    load_rgb,
    make_crops,
)
from rar.data.parts import (
    expected_sidecar,
    merge_parts,
    parse_parts,
    plan_parts,
    select_parts,
    short_list,
    sidecar_if_complete,
)
from rar.data.shards import (
    atomic_write_bytes,
    atomic_write_json,
    shard_name,
    sidecar_name,
    tar_bytes,
)
from rar.runtime import autocast, autocast_dtype, resolve_device

log = logging.getLogger(__name__)

# What the CLI and the tests import from here (the parts themselves: rar.data.parts).
__all__ = [
    "merge_parts",
    "parse_parts",
    "part_settings",
    "plan_parts",
    "select_parts",
    "tokenize_images",
]

# ------------------------------------------------------------------------------------------
# decoding workers
# ------------------------------------------------------------------------------------------


class _PartImages(torch.utils.data.Dataset):
    """Decode + crop in DataLoader workers: item i -> (i, crops (K, S, S, 3) uint8 | None, err)."""

    def __init__(self, root: Path, sources: Sequence[SourceImage], crop: str, size: int):
        self.root, self.sources, self.crop, self.size = root, sources, crop, size

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        try:
            img = load_rgb(self.root / self.sources[i].relpath)
            return i, make_crops(img, self.crop, self.size), None
        except Exception as err:  # any decoder failure is a counted, logged, skipped file
            return i, None, f"{type(err).__name__}: {err}"


def _as_list(batch):
    return batch


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _open_tokenizer(tokenizer: Any, grid: int | None = None) -> tuple[Any, str | None]:
    """(the tokenizer, the path of its file or None): a path is loaded (at `grid` tokens a
    side, if given), an object is used; its codes must fit the shards' uint16."""
    path = None
    if isinstance(tokenizer, (str, os.PathLike)):
        from rar.model.tokenizer import load_tokenizer  # heavy: only when given a file

        path, tokenizer = str(tokenizer), load_tokenizer(tokenizer, grid=grid)
    if tokenizer.codebook_size > np.iinfo(np.uint16).max + 1:
        raise ValueError(f"codebook of {tokenizer.codebook_size} codes does not fit uint16")
    return tokenizer, path


def part_settings(
    tokenizer: Any,
    *,
    crop: str,
    images_per_part: int,
    shuffle_seed: int,
    num_files: int,
    num_classes: int,
    write_crop: bool,
) -> dict:
    """Everything a part's tokens depend on besides its source files: a part is redone when
    its sidecar records other settings."""
    return {
        "crop": crop,
        "image_size": int(tokenizer.image_size),
        "samples_per_image": CROPS_PER_IMAGE[crop],
        "tokens_per_sample": int(tokenizer.grid) ** 2,
        "tokenizer_identity": tokenizer.identity(),
        "codebook_size": int(tokenizer.codebook_size),
        "grid": int(tokenizer.grid),
        "images_per_part": images_per_part,
        "shuffle_seed": shuffle_seed,
        "num_files": num_files,
        "num_classes": num_classes,
        "write_crop": write_crop,
    }


# ------------------------------------------------------------------------------------------
# the stage
# ------------------------------------------------------------------------------------------


def tokenize_images(
    image_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    tokenizer: Any,
    grid: int | None = None,
    crop: str = "center+flip",
    images_per_part: int = 1000,
    shuffle_seed: int = 0,
    parts: Sequence[int] | None = None,
    job_index: int | None = None,
    num_jobs: int | None = None,
    batch_size: int = 64,
    device: str = "auto",
    dtype: str = "fp32",
    num_workers: int | None = None,
    write_crop: bool = False,
    merge: bool = True,
    progress: bool = True,
) -> dict:
    """Tokenize an ImageNet-train-layout folder into WebDataset token shards.

    image_dir: `<image_dir>/<wnid>/<file>`; class ids are the sorted wnids.
    tokenizer: a `rar.model.tokenizer.Tokenizer` (or any object with `encode((B, 3, S, S) float in
        [0, 1]) -> (B, N) int64`, `codebook_size`, `grid`, `image_size`, `identity()`), or the
        path of a tokenizer file (`rar.model.tokenizer.load_tokenizer`; recorded in the manifest).
    grid: tokens a side for a tokenizer file (the study's `tokenizer.grid`; default its own).
    crop: 'center', 'center+flip' (official script's default) or 'tencrop' (released data).
    parts / job_index + num_jobs: which parts this call runs (default: all).
    batch_size: source images per encode call (x K crops each).
    dtype: 'fp32' or 'bf16' (autocast around `encode`).
    merge: write manifest.json when, after this call, every part is complete.

    Returns a summary dict: parts run and skipped, unreadable files, manifest path (or None).
    """
    if crop not in CROP_MODES:
        raise ValueError(f"unknown crop {crop!r}; choose from {sorted(CROP_MODES)}")
    if dtype not in ("fp32", "bf16"):  # no "auto": the tokens would depend on the machine
        raise ValueError(f"dtype must be 'fp32' or 'bf16', got {dtype!r}")
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    tokenizer, tokenizer_path = _open_tokenizer(tokenizer, grid)
    classes, images = list_images(image_dir)
    plan = plan_parts(len(images), images_per_part=images_per_part, shuffle_seed=shuffle_seed)
    todo_parts = select_parts(len(plan), parts=parts, job_index=job_index, num_jobs=num_jobs)
    settings = part_settings(
        tokenizer,
        crop=crop,
        images_per_part=images_per_part,
        shuffle_seed=shuffle_seed,
        num_files=len(images),
        num_classes=len(classes),
        write_crop=write_crop,
    )
    call = _Call(
        image_dir=image_dir,
        out_dir=out_dir,
        classes=classes,
        images=images,
        plan=plan,
        settings=settings,
        tokenizer=tokenizer,
        tokenizer_path=tokenizer_path,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        num_workers=num_workers,
        progress=progress,
    )
    return call.run(todo_parts, merge=merge)


@dataclass(frozen=True)
class _Call:
    """One tokenize call, set up once (`tokenize_images`): the source images and their parts,
    where the shards go, the settings every part records, and how images become codes."""

    image_dir: Path
    out_dir: Path
    classes: Sequence[str]
    images: Sequence[SourceImage]
    plan: Sequence[np.ndarray]  # each part's positions in `images`
    settings: dict  # `part_settings`
    tokenizer: Any
    tokenizer_path: str | None
    batch_size: int
    device: str
    dtype: str
    num_workers: int | None
    progress: bool

    def expect(self, part: int) -> dict:
        """What the part's sidecar must record (`expected_sidecar`)."""
        return expected_sidecar(self.settings, self.images, self.plan, part)

    def run(self, todo_parts: Sequence[int], *, merge: bool) -> dict:
        """Encode the parts of `todo_parts` that are not complete yet (`_run_parts`), then
        (merge) write the manifest when every part is; `tokenize_images`'s summary."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        skipped = [
            p for p in todo_parts if sidecar_if_complete(self.out_dir, p, self.expect(p), full=True)
        ]
        run = [p for p in todo_parts if p not in set(skipped)]
        if skipped:
            log.info("%d part(s) already complete, skipped: %s", len(skipped), short_list(skipped))
        unreadable = _run_parts(self, run) if run else []
        manifest_path = None
        if merge:
            manifest_path = merge_parts(
                self.out_dir,
                num_parts=len(self.plan),
                expect=self.expect,
                classes=self.classes,
                settings=self.settings,
                tokenize={
                    "image_dir": str(self.image_dir),
                    "tokenizer_path": self.tokenizer_path,
                    **{k: self.settings[k] for k in ("crop", "images_per_part", "shuffle_seed")},
                },
            )
        return {
            "num_parts": len(self.plan),
            "parts_run": run,
            "parts_skipped": skipped,
            "num_unreadable": len(unreadable),
            "unreadable": unreadable,
            "manifest": str(manifest_path) if manifest_path else None,
        }


def _run_parts(call: _Call, run: Sequence[int]) -> list[str]:
    """Encode the parts in `run`, writing each part's shard + sidecar as soon as it is done.
    Returns the unreadable files' relative paths."""
    dev = resolve_device(call.device)
    call.tokenizer.to(dev)
    call.tokenizer.eval()
    # One DataLoader over all parts (workers start once), with batches cut at part
    # boundaries so a part's batch composition never depends on which other parts run.
    plan = call.plan
    sources = [call.images[i] for p in run for i in plan[p]]
    batches, part_of_batch = _batches_by_part([len(plan[p]) for p in run], run, call.batch_size)
    num_workers = min(8, os.cpu_count() or 1) if call.num_workers is None else call.num_workers
    loader = torch.utils.data.DataLoader(
        _PartImages(call.image_dir, sources, call.settings["crop"], call.settings["image_size"]),
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=_as_list,
    )
    amp, k = autocast_dtype(call.dtype, dev), CROPS_PER_IMAGE[call.settings["crop"]]
    unreadable_all: list[str] = []
    members: list[tuple[str, bytes]] = []
    part_unreadable: list[str] = []
    part_images = 0
    bar = tqdm(total=len(sources), unit="img", disable=not call.progress, desc="tokenize")
    t0 = time.perf_counter()
    for bi, batch in enumerate(loader):
        p = part_of_batch[bi]
        ok = [(i, crops) for i, crops, err in batch if err is None]
        for i, _, err in batch:
            if err is not None:
                path = str(call.image_dir / sources[i].relpath)
                log.warning("unreadable image skipped: %s (%s)", path, err)
                part_unreadable.append(sources[i].relpath)
        if ok:
            ids = _encode(call.tokenizer, [c for _, c in ok], dev, amp)
            members += _members(
                [sources[i] for i, _ in ok], ids, k, write_crop=call.settings["write_crop"]
            )
            part_images += len(ok)
        bar.update(len(batch))
        last_of_part = bi + 1 == len(batches) or part_of_batch[bi + 1] != p
        if last_of_part:
            _write_part(call.out_dir, p, members, part_images, k, part_unreadable, call.expect(p))
            unreadable_all += part_unreadable
            members, part_unreadable, part_images = [], [], 0
    bar.close()
    dt = time.perf_counter() - t0
    print(
        f"tokenized {len(sources)} images in {len(run)} part(s) in {dt:.1f} s "
        f"({len(sources) / max(dt, 1e-9):.1f} images/s), {len(unreadable_all)} unreadable",
        flush=True,
    )
    return unreadable_all


def _batches_by_part(
    sizes: Sequence[int], parts: Sequence[int], batch_size: int
) -> tuple[list[list[int]], list[int]]:
    """Batches of positions in the parts' concatenated source list (`sizes[j]` files of part
    `parts[j]`), cut at part boundaries, and the part of each batch."""
    batches, part_of_batch, start = [], [], 0
    for n, p in zip(sizes, parts, strict=True):
        for b in range(0, n, batch_size):
            batches.append(list(range(start + b, start + min(b + batch_size, n))))
            part_of_batch.append(p)
        start += n
    return batches, part_of_batch


def _encode(
    tokenizer: Any, crops: list[np.ndarray], dev: torch.device, amp: torch.dtype | None
) -> np.ndarray:
    """crops: each image's (K, S, S, 3) uint8 -> codes (n*K, N) uint16, crop-major per image."""
    x = torch.from_numpy(np.concatenate(crops))  # (n*K, S, S, 3) uint8
    x = x.to(dev).permute(0, 3, 1, 2).float().div_(255.0)  # (n*K, 3, S, S) in [0, 1]
    with autocast(dev, amp):
        ids = tokenizer.encode(x)  # (n*K, N) int64
    return ids.to("cpu").numpy().astype(np.uint16)


def _members(
    sources: Sequence[SourceImage], ids: np.ndarray, k: int, *, write_crop: bool
) -> list[tuple[str, bytes]]:
    """The tar members of encoded images: for crop c of each, `<key>_<c>.cls`, `.crop` (with
    write_crop) and `.tokens.npy` (row i * k + c of `ids`)."""
    members = []
    for j, src in enumerate(sources):
        for c in range(k):
            key = f"{src.key}_{c}"
            members.append((f"{key}.cls", str(src.label).encode()))
            if write_crop:
                members.append((f"{key}.crop", str(c).encode()))
            members.append((f"{key}.tokens.npy", _npy_bytes(ids[j * k + c])))
    return members


def _write_part(
    out_dir: Path,
    part: int,
    members: list[tuple[str, bytes]],
    num_images: int,
    k: int,
    unreadable: list[str],
    expect: dict,
) -> None:
    """Shard first, sidecar second (both atomic): a sidecar only exists for a finished shard."""
    data = tar_bytes(members)
    atomic_write_bytes(out_dir / shard_name(part), data)
    meta = {
        "part": part,
        "shard": shard_name(part),
        "num_images": num_images,
        "num_samples": num_images * k,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "unreadable": unreadable,
        **expect,
    }
    atomic_write_json(out_dir / sidecar_name(part), meta)
    log.info(
        "part %d: %d images (%d unreadable) -> %s, %d samples",
        part,
        num_images,
        len(unreadable),
        shard_name(part),
        num_images * k,
    )
