"""The parts of a tokenize run (rar.data.tokenize): the plan that splits the source listing
into parts, which parts a job runs, each part's sidecar and whether it is complete, and the
manifest merged from the sidecars once every part is."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from rar.data.images import SourceImage
from rar.data.shards import (
    FORMAT,
    MANIFEST,
    atomic_write_json,
    read_json,
    sha256_file,
    shard_name,
    sidecar_name,
)

log = logging.getLogger(__name__)


def plan_parts(num_images: int, *, images_per_part: int, shuffle_seed: int) -> list[np.ndarray]:
    """Split `num_images` listing indices into parts: a seeded permutation cut into
    consecutive chunks of `images_per_part` (the last may be shorter)."""
    if images_per_part < 1:
        raise ValueError("images_per_part must be >= 1")
    order = np.random.default_rng(shuffle_seed).permutation(num_images)
    return [order[i : i + images_per_part] for i in range(0, num_images, images_per_part)]


def select_parts(
    num_parts: int,
    *,
    parts: Sequence[int] | None = None,
    job_index: int | None = None,
    num_jobs: int | None = None,
) -> list[int]:
    """Which parts one job runs: an explicit list, or every `num_jobs`-th part starting at
    `job_index` (e.g. `$SLURM_ARRAY_TASK_ID` of an array of `num_jobs`), or all of them."""
    if parts is not None and job_index is not None:
        raise ValueError("give either parts or job_index/num_jobs, not both")
    if job_index is not None:
        if num_jobs is None or not 0 <= job_index < num_jobs:
            raise ValueError(f"need 0 <= job_index < num_jobs, got {job_index}, {num_jobs}")
        return list(range(job_index, num_parts, num_jobs))
    if parts is None:
        return list(range(num_parts))
    bad = [p for p in parts if not 0 <= p < num_parts]
    if bad:
        raise ValueError(f"parts {bad} out of range: this folder has parts 0..{num_parts - 1}")
    return sorted(set(parts))


def parse_parts(spec: str) -> list[int]:
    """'3,4,5' or '0-9,12' -> [3, 4, 5] / [0, ..., 9, 12]."""
    out: list[int] = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        if "-" in item:
            lo, hi = item.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(item))
    return out


def sources_sha256(sources: Sequence[SourceImage]) -> str:
    h = hashlib.sha256()
    for s in sources:
        h.update(f"{s.relpath}\t{s.label}\n".encode())
    return h.hexdigest()


def expected_sidecar(
    settings: dict, images: Sequence[SourceImage], plan: Sequence[np.ndarray], part: int
) -> dict:
    """What a part's sidecar must record: the settings and the hash of its source list."""
    return {
        "settings": settings,
        "sources_sha256": sources_sha256([images[i] for i in plan[part]]),
    }


def sidecar_if_complete(out_dir: Path, part: int, expect: dict, *, full: bool) -> dict | None:
    """The part's sidecar if its shard is finished and matches `expect` (settings and source
    list); `full` also re-hashes the shard (else size only). None means: (re)do the part."""
    side, shard = out_dir / sidecar_name(part), out_dir / shard_name(part)
    if not side.exists() or not shard.exists():
        return None
    try:
        meta = read_json(side)
    except (ValueError, OSError):
        return None
    if any(meta.get(k) != v for k, v in expect.items()):
        return None
    if shard.stat().st_size != meta["size"]:
        return None
    if full and sha256_file(shard) != meta["sha256"]:
        return None
    return meta


def short_list(parts: Sequence[int]) -> str:
    return str(list(parts)) if len(parts) <= 10 else f"{list(parts[:10])} ... ({len(parts)})"


def merge_parts(
    out_dir: Path,
    *,
    num_parts: int,
    expect: Callable[[int], dict],
    classes: Sequence[str],
    settings: dict,
    tokenize: dict,
) -> Path | None:
    """Write manifest.json (atomically) if every part's sidecar exists and matches; else
    return None. Checks sizes, not hashes: each part was hashed when written or skipped, and
    `verify_shards` re-hashes everything."""
    sides = []
    missing = []
    for p in range(num_parts):
        meta = sidecar_if_complete(out_dir, p, expect(p), full=False)
        (sides.append(meta) if meta else missing.append(p))
    if missing:
        log.info(
            "not merging: %d of %d parts missing: %s", len(missing), num_parts, short_list(missing)
        )
        return None
    unreadable = sorted(u for m in sides for u in m["unreadable"])
    manifest = {
        "format": FORMAT,
        "shards": [
            {k: m[k] for k in ("part", "num_images", "num_samples", "size", "sha256")}
            | {"name": m["shard"]}
            for m in sides
        ],
        "num_shards": num_parts,
        "num_samples": sum(m["num_samples"] for m in sides),
        # Epoch = one pass over these, whatever the number of crops per image.
        "num_source_images": sum(m["num_images"] for m in sides),
        "num_unreadable": len(unreadable),
        "unreadable": unreadable,
        "classes": list(classes),
        "token_dtype": "uint16",
        "tokenizer": {
            "identity": settings["tokenizer_identity"],
            "codebook_size": settings["codebook_size"],
            "grid": settings["grid"],
            "image_size": settings["image_size"],
        },
        "tokenize": tokenize,
        **{
            k: settings[k]
            for k in ("crop", "samples_per_image", "tokens_per_sample", "num_files", "num_classes")
        },
    }
    path = out_dir / MANIFEST
    atomic_write_json(path, manifest)
    print(
        f"wrote {path}: {num_parts} shards, {manifest['num_samples']} samples from "
        f"{manifest['num_source_images']} images ({len(unreadable)} unreadable)",
        flush=True,
    )
    return path
