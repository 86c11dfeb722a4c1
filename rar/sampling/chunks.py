"""The layout of a sample set and its chunks: which class each image has, which seed draws
it, which process makes it, and the merge into one file. Torch only for the generators.

- ADM layout: class-interleaved. The label list is `num_per_class` blocks of `num_classes`
  images; block b holds every class exactly once, in the order
  `default_rng(SeedSequence([seed, b], spawn_key=(LABEL_STREAM,))).permutation(num_classes)`
  (`class_labels`). Why: ADM's evaluator takes the Inception Score over consecutive splits of
  5,000 images of `arr_0`, unshuffled; a class-sorted file (0,0,...,1,1,...; rar-samples/1)
  gives it splits of 100 classes each, so a flat marginal p(y) is never seen and the IS comes
  out deflated. Interleaved, every split (and every prefix) is class-balanced;
- the list is cut in order into fixed chunks of `chunk_size` images; chunk i is generated
  with a torch.Generator seeded from `SeedSequence([seed, i])`, so every image depends only on
  (seed, its index), never on the number of processes or on restarts. (DiT's `sample_ddp.py`
  seeds per rank, `global_seed * world_size + rank`, which changes the samples when the GPU
  count changes; per-chunk seeds keep DiT's sharding without that.)
- processes (RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS) take chunks `i % world == rank`;
  each chunk is written atomically under `<out>.chunks/`, so a rerun after a crash or SIGKILL
  skips finished chunks; `<out>.chunks/plan.json` records the settings and the format
  (SAMPLES_FORMAT), and chunks of other settings or of an older format are refused;
- when every chunk exists, one process merges them into `<out>` (`arr_0`: (N, H, W, 3)
  uint8, `labels`: (N,) int64, aligned) and a PNG grid (rows by class, picked by label). The
  `.npz` is written with fixed zip metadata, so an interrupted and an uninterrupted run give
  byte-identical files (numpy's `savez` stamps the current time into the zip).
  The chunk files then go; `<out>.chunks/finished/` keeps hard links to the merged files, so
  that outputs deleted by the workflow come back without sampling again.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from rar.files import (
    StreamedArray,
    atomic_write_bytes,
    open_npz_array,
    read_json,
    sha256_file,
    write_json,
    write_npz,
)

# rar-samples/1: class-sorted labels; rar-samples/2: class-interleaved (the ADM layout above).
SAMPLES_FORMAT = "rar-samples/2"
CHUNK_NAME = "chunk_{:06d}.npz"
LABEL_STREAM = 1  # SeedSequence spawn key of the label order: apart from the chunk streams

# ##########################################################################################
# Chunk arithmetic and seeds
# ##########################################################################################


def label_block(seed: int, block: int, num_classes: int) -> np.ndarray:
    """The classes of block `block` of the output, in order -> (num_classes,) int64: a
    permutation of range(num_classes) that depends only on (seed, block)."""
    seq = np.random.SeedSequence([seed, block], spawn_key=(LABEL_STREAM,))
    return np.random.default_rng(seq).permutation(num_classes).astype(np.int64)


def class_labels(num_classes: int, num_per_class: int, *, seed: int) -> np.ndarray:
    """The label of every image, in output order -> (num_classes * num_per_class,) int64:
    `num_per_class` consecutive blocks, each holding every class once (`label_block`), so that
    any run of consecutive images is class-balanced (the ADM layout of the module docstring)."""
    if num_classes <= 0 or num_per_class <= 0:
        raise ValueError(
            f"need num_classes > 0 and num_per_class > 0, got {num_classes}, {num_per_class}"
        )
    return np.concatenate([label_block(seed, b, num_classes) for b in range(num_per_class)])


def num_chunks(num_images: int, chunk_size: int) -> int:
    """Chunks of `chunk_size` images (the last one may be shorter)."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    return math.ceil(num_images / chunk_size)


def chunk_bounds(index: int, num_images: int, chunk_size: int) -> tuple[int, int]:
    """[start, stop) of chunk `index` in the output order."""
    start = index * chunk_size
    if not 0 <= start < num_images:
        raise IndexError(f"chunk {index} is outside {num_images} images of {chunk_size}")
    return start, min(start + chunk_size, num_images)


def chunks_of_rank(total_chunks: int, rank: int, world_size: int) -> list[int]:
    """Chunks process `rank` of `world_size` generates: i % world_size == rank."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return list(range(rank, total_chunks, world_size))


def chunk_seed(seed: int, index: int) -> int:
    """64-bit seed of chunk `index` under base `seed`, from numpy's SeedSequence([seed, index]):
    well-mixed, so neighbouring chunks and seeds get unrelated streams."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)
    return int(state[0])


def chunk_generator(seed: int, index: int, device: torch.device | str) -> torch.Generator:
    """The torch.Generator that draws every random number of chunk `index` on `device`."""
    return torch.Generator(device=torch.device(device)).manual_seed(chunk_seed(seed, index))


def chunk_dir_for(out: str | os.PathLike) -> Path:
    """Where the chunks of `out` live: `<out>.chunks/`."""
    out = Path(out)
    return out.with_name(out.name + ".chunks")


# ##########################################################################################
# Chunk files: the plan, waiting for the other processes, the merge and its grid
# ##########################################################################################


PLAN_FILE = "plan.json"  # <out>.chunks/plan.json: the settings the chunks are made with


# Sampling settings that plans once recorded, with the value that left them off. They were
# removed (the paper samples without them); a plan that holds them at these values is the same
# plan without them, so sets and chunks made before their removal are neither redone nor
# refused.
RETIRED_SAMPLING = {"top_k": 0, "top_p": 1.0}


def without_retired(plan: dict) -> dict:
    """`plan` (a chunk plan, or samples.json's copy) without the retired sampling settings,
    when each is off; unchanged otherwise (a set drawn with top-k is another set)."""
    sampling = plan.get("sampling")
    if not isinstance(sampling, dict) or not set(RETIRED_SAMPLING) & set(sampling):
        return plan
    if any(sampling.get(k, off) not in (off, None) for k, off in RETIRED_SAMPLING.items()):
        return plan
    kept = {k: v for k, v in sampling.items() if k not in RETIRED_SAMPLING}
    return {**plan, "sampling": kept}


def read_plan(chunk_dir: Path) -> dict | None:
    """The chunk plan recorded in `chunk_dir` (`write_plan`), or None if there is none."""
    path = chunk_dir / PLAN_FILE
    return without_retired(read_json(path)) if path.is_file() else None


def write_plan(chunk_dir: Path, plan: dict) -> None:
    """Record the chunk plan in `chunk_dir`, atomically."""
    write_json(chunk_dir / PLAN_FILE, plan)


def check_plan(chunk_dir: Path, plan: dict) -> None:
    """Record the settings the chunks are made with; refuse chunks made with other ones (a
    different checkpoint or seed would otherwise be mixed silently into one sample set)."""
    old = read_plan(chunk_dir)
    if old is not None:
        if old.get("format") != plan["format"]:
            raise ValueError(
                f"{chunk_dir} holds chunks of an unfinished sampling in the layout "
                f"{old.get('format')!r} (rar-samples/1: class-sorted labels), which cannot be "
                f"mixed with {plan['format']!r} (class-interleaved labels); delete that folder "
                "to start over"
            )
        if old != plan:
            diff = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
            raise ValueError(
                f"{chunk_dir} holds chunks made with other settings (differing: "
                f"{', '.join(diff)}); delete that folder to start over"
            )
        return
    write_plan(chunk_dir, plan)


FINISHED = "finished"  # <out>.chunks/finished/: hard links to a merged set's files


def keep_finished(chunk_dir: Path, files: list[Path]) -> None:
    """After the merge: the chunk files go; `plan.json` stays, and `finished/` keeps a hard
    link to each of `files` (no disk of their own). Snakemake deletes a job's outputs before
    it runs the job again (one it saw as incomplete after it died while the job ran on):
    `restore_finished` brings them back instead of sampling again."""
    finished = chunk_dir / FINISHED
    finished.mkdir(exist_ok=True)
    for path in files:
        _link(path, finished / path.name)
    for path in chunk_dir.glob("chunk_*"):
        path.unlink()


def restore_finished(chunk_dir: Path, files: list[Path], plan: dict) -> bool:
    """Link back those of `files` that are missing from `chunk_dir`'s `finished/` copies, when
    all are kept there and were made with `plan`; False (and nothing done) otherwise."""
    kept = [chunk_dir / FINISHED / path.name for path in files]
    if not all(k.is_file() for k in kept) or read_plan(chunk_dir) != plan:
        return False
    for path, copy in zip(files, kept, strict=True):
        if not path.exists():
            _link(copy, path)
    print(f"restored {', '.join(p.name for p in files)} from {chunk_dir / FINISHED}", flush=True)
    return True


def drop_finished(chunk_dir: Path, plan: dict) -> None:
    """Remove a finished set's folder kept under other settings than `plan` (its links would
    keep the replaced files' disk taken, and its plan.json would refuse the new chunks)."""
    if (chunk_dir / FINISHED).is_dir() and read_plan(chunk_dir) != plan:
        shutil.rmtree(chunk_dir, ignore_errors=True)


def _link(source: Path, dest: Path) -> None:
    """`dest` as a hard link to `source`, replacing it atomically."""
    tmp = dest.with_name(f".{dest.name}.link")
    tmp.unlink(missing_ok=True)
    os.link(source, tmp)
    os.replace(tmp, dest)


def remove_chunks(chunk_dir: Path) -> None:
    """Delete the chunk folder and everything in it (plan.json, the chunks)."""
    for f in chunk_dir.iterdir():
        f.unlink()
    chunk_dir.rmdir()


def wait_for_chunks(chunk_dir: Path, total: int, timeout_s: float) -> list[int]:
    """Poll until every chunk exists or `timeout_s` passes -> the chunks still missing.

    Files, not DiT's `dist.barrier()`: the processes may be separate jobs (an array, a rerun
    of one failed rank) that share no process group, only the file system."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [i for i in range(total) if not (chunk_dir / CHUNK_NAME.format(i)).exists()]
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))


def merge_chunks(out: Path, chunk_dir: Path, plan: dict, labels: np.ndarray, grid: Path) -> dict:
    """Concatenate the chunks of `plan` (check_plan) into `out`, streaming, checking each
    chunk's labels against `labels`; write the grid; return counts and times."""
    chunk_size, num_classes = plan["chunk_size"], plan["num_classes"]
    total = num_chunks(len(labels), chunk_size)
    paths = [chunk_dir / CHUNK_NAME.format(i) for i in range(total)]
    first = open_npz_array(paths[0], "images")
    shape = (len(labels), *first.shape[1:])
    seconds = 0.0
    for p in paths:
        seconds += float(open_npz_array(p, "seconds"))

    def parts() -> Iterable[np.ndarray]:
        done = 0
        for p in paths:
            images = open_npz_array(p, "images")
            chunk_labels = open_npz_array(p, "labels")
            if not np.array_equal(chunk_labels, labels[done : done + len(chunk_labels)]):
                raise ValueError(f"{p}: labels do not match the plan; delete {chunk_dir}")
            done += len(images)
            yield images

    write_npz(out, {"arr_0": StreamedArray(shape, np.dtype(np.uint8), parts()), "labels": labels})
    images = open_npz_array(out, "arr_0")
    shown = save_grid(images, labels, grid, num_classes=num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    return {
        "format": SAMPLES_FORMAT,
        "samples": out.name,
        "samples_sha256": sha256_file(out),
        "num_samples": len(labels),
        "num_classes": num_classes,
        "num_per_class": plan["num_per_class"],
        "per_class_min": int(counts.min()),
        "per_class_max": int(counts.max()),
        "image_size": list(shape[1:3]),
        "chunk_size": chunk_size,
        "num_chunks": total,
        "grid": grid.name,
        "grid_classes": shown,
        "sampling_seconds": round(seconds, 3),
        "images_per_s": round(len(labels) / seconds, 3) if seconds > 0 else None,
    }


def save_grid(
    images: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike,
    *,
    num_classes: int,
    max_classes: int = 16,
    per_class: int = 8,
) -> list[int]:
    """A PNG for people to look at: one row per class, its first `per_class` samples (picked
    by label, whatever the file's order), for up to `max_classes` classes spread evenly over
    the label range. images: (N, H, W, 3) uint8; labels: (N,) the class of each image.
    Returns the classes shown."""
    from PIL import Image

    spread = np.linspace(0, num_classes - 1, min(max_classes, num_classes))
    classes = sorted({int(c) for c in spread})
    rows = [np.flatnonzero(labels == c)[:per_class] for c in classes]
    cols = min(len(r) for r in rows)
    _, H, W, _ = images.shape
    canvas = np.zeros((len(classes) * H, cols * W, 3), dtype=np.uint8)
    for r, indices in enumerate(rows):
        for j, i in enumerate(indices[:cols]):
            canvas[r * H : (r + 1) * H, j * W : (j + 1) * W] = images[i]
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return classes
