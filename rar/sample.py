"""`rar sample`: class-conditional samples for FID, in the layout the ADM evaluation suite reads.

The paper's numbers (RAR Table 1-6) come from 50,000 images, 50 per ImageNet class, scored by
the ADM suite (Dhariwal & Nichol, guided-diffusion `evaluations/evaluator.py`). This module
writes exactly that set:

- ADM layout: class-interleaved. The label list is `num_per_class` blocks of `num_classes`
  images; block b holds every class exactly once, in the order
  `default_rng(SeedSequence([seed, b], spawn_key=(LABEL_STREAM,))).permutation(num_classes)`
  (`class_labels`). Why: ADM's evaluator takes the Inception Score over consecutive splits of
  5,000 images of `arr_0`, unshuffled; a class-sorted file (0,0,...,1,1,...; rar-samples/1)
  gives it splits of 100 classes each, so a flat marginal p(y) is never seen and the IS comes
  out deflated. Interleaved, every split (and every prefix) is class-balanced;
- the list is cut in order into fixed chunks of `chunk_size` images (DEFAULT_CHUNK_SIZE, the
  study schema's `sampling.chunk_size`); chunk i is generated with a torch.Generator seeded from
  `SeedSequence([seed, i])`, so every image depends only on (seed, its index), never on the
  number of processes or on restarts. (DiT's `sample_ddp.py` seeds per rank,
  `global_seed * world_size + rank`, which changes the samples when the GPU count changes;
  per-chunk seeds keep DiT's sharding without that.)
- processes (RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS) take chunks `i % world == rank`;
  each chunk is written atomically under `<out>.chunks/`, so a rerun after a crash or SIGKILL
  skips finished chunks; `<out>.chunks/plan.json` records the settings and the format
  (SAMPLES_FORMAT), and chunks of other settings or of an older format are refused;
- when every chunk exists, rank 0 (or any later single-process call) merges them into
  `<out>` (`arr_0`: (N, H, W, 3) uint8, `labels`: (N,) int64, aligned), a PNG grid (rows by
  class, picked by label) and `<out stem>.json`. The `.npz` is written with fixed zip metadata,
  so an interrupted and an uninterrupted run give byte-identical files (numpy's `savez` stamps
  the current time into the zip).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from rar import presets
from rar.checkpoint import load_generator
from rar.generate import SAMPLING_PRESETS, SamplingConfig, generate
from rar.io import (
    StreamedArray,
    atomic_write_bytes,
    open_npz_array,
    sha256_file,
    write_json,
    write_npz,
)
from rar.model import RAR
from rar.runtime import resolve_device

# rar-samples/1: class-sorted labels; rar-samples/2: class-interleaved (the ADM layout above).
SAMPLES_FORMAT = "rar-samples/2"
PAPER_NUM_PER_CLASS = 50  # RAR §4.1 / ADM: 50,000 samples = 50 per ImageNet class
# Images per chunk (rar.presets: the one default of sample(), `rar sample` and the study
# schema's `sampling.chunk_size`, which a test holds equal).
DEFAULT_CHUNK_SIZE = presets.DEFAULT_CHUNK_SIZE
CHUNK_NAME = "chunk_{:06d}.npz"
LABEL_STREAM = 1  # SeedSequence spawn key of the label order: apart from the chunk streams
GUIDANCE_SCALE_KEY = "guidance_scale"  # the key `--guidance-scale-from` reads (rar sweep-guidance)

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


# ##########################################################################################
# Files: hashes, deterministic .npz, memory-mapped reading
# ##########################################################################################


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


# ##########################################################################################
# Loading the generator
# ##########################################################################################


def read_guidance_scale(path: str | os.PathLike) -> float:
    """The classifier-free guidance scale stored under GUIDANCE_SCALE_KEY in JSON file `path`
    (written by a guidance sweep, `rar sweep-guidance`); see `read_guidance_file`."""
    return float(read_guidance_file(path)[GUIDANCE_SCALE_KEY])


def read_guidance_file(path: str | os.PathLike) -> dict:
    """The JSON object of a guidance file (a sweep's guidance.json), read once. Raises
    ValueError naming the file and the key when the file is missing, is not JSON or lacks a
    finite number under GUIDANCE_SCALE_KEY."""
    path = Path(path)
    want = f"a JSON object with a number under {GUIDANCE_SCALE_KEY!r}"
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file (expected {want})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not JSON ({err}); expected {want}") from None
    if not isinstance(obj, dict) or GUIDANCE_SCALE_KEY not in obj:
        raise ValueError(f"{path}: no key {GUIDANCE_SCALE_KEY!r} (expected {want})")
    value = obj[GUIDANCE_SCALE_KEY]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{path}: {GUIDANCE_SCALE_KEY!r} is {value!r}, not a finite number")
    return obj


def resolve_sampling(
    model_size: str | None,
    *,
    preset: str | None = None,
    guidance_scale: float | None = None,
    guidance_power: float | None = None,
    guidance_schedule: str | None = None,
    temperature: float | None = None,
    order: str | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
) -> tuple[SamplingConfig, str | None]:
    """The sampling settings: `preset` (a SAMPLING_PRESETS name), else the preset of the
    model's size when it has one, else SamplingConfig's defaults; then each given override.
    guidance_schedule: one of rar.presets.GUIDANCE_SCHEDULES (SamplingConfig checks it).
    Returns (settings, name of the preset used or None)."""
    if preset is not None and preset not in SAMPLING_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(SAMPLING_PRESETS)}")
    name = preset or (model_size if model_size in SAMPLING_PRESETS else None)
    base = SAMPLING_PRESETS[name] if name else SamplingConfig()
    overrides = {
        "guidance_scale": guidance_scale,
        "guidance_power": guidance_power,
        "guidance_schedule": guidance_schedule,
        "temperature": temperature,
        "order": order,
        "top_k": top_k,
        "top_p": top_p,
    }
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None}), name


# ##########################################################################################
# Sampling
# ##########################################################################################


def _amp_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    if dtype == "auto":
        dtype = "bf16" if device.type == "cuda" else "fp32"
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"dtype must be 'fp32', 'bf16' or 'auto', got {dtype!r}")
    return torch.bfloat16 if dtype == "bf16" else None


def chunk_dir_for(out: str | os.PathLike) -> Path:
    """Where the chunks of `out` live: `<out>.chunks/`."""
    out = Path(out)
    return out.with_name(out.name + ".chunks")


def info_path_for(out: str | os.PathLike) -> Path:
    """The settings file beside `out`: `samples.npz` -> `samples.json`."""
    return Path(out).with_suffix(".json")


def _check_plan(chunk_dir: Path, plan: dict) -> None:
    """Record the settings the chunks are made with; refuse chunks made with other ones (a
    different checkpoint or seed would otherwise be mixed silently into one sample set)."""
    path = chunk_dir / "plan.json"
    if path.exists():
        old = json.loads(path.read_text())
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
    write_json(path, plan)


def _generate_chunk(
    model: RAR,
    tokenizer,
    labels: np.ndarray,
    *,
    sampling: SamplingConfig,
    generator: torch.Generator,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    compile: bool,
) -> np.ndarray:
    """labels (n,) -> images (n, H, W, 3) uint8."""
    from rar.tokenizer import to_uint8

    ids = generate(
        model,
        torch.from_numpy(labels).to(device),
        guidance_scale=sampling.guidance_scale,
        guidance_power=sampling.guidance_power,
        guidance_schedule=sampling.guidance_schedule,
        temperature=sampling.temperature,
        order=sampling.order,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        generator=generator,
        amp_dtype=amp_dtype,
        compile=compile,
    )  # (n, N) raster-order codes
    # Decoded in fp32 even under bf16 sampling: bf16 moves pixels across the truncation
    # boundary of to_uint8, and decoding is a small part of the time (256 steps vs one pass).
    return to_uint8(tokenizer.decode(ids)).cpu().numpy()  # (n, H, W, 3)


def _make_chunks(
    model: RAR,
    tokenizer,
    labels: np.ndarray,
    *,
    chunk_dir: Path,
    chunks: list[int],
    chunk_size: int,
    seed: int,
    sampling: SamplingConfig,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    compile: bool,
    progress: bool,
    desc: str,
) -> None:
    """Generate each of `chunks` that has no file yet into `chunk_dir`, one atomic file each
    (`images` (n, H, W, 3) uint8, `labels` (n,), `seconds`), with a progress bar in images/s."""
    from tqdm import tqdm

    todo = [i for i in chunks if not (chunk_dir / CHUNK_NAME.format(i)).exists()]
    bounds = {i: chunk_bounds(i, len(labels), chunk_size) for i in todo}
    todo_images = sum(stop - start for start, stop in bounds.values())
    print(
        f"{desc}: {len(todo)} of my {len(chunks)} chunks to make ({todo_images} images) on "
        f"{device}, {'bf16' if amp_dtype else 'fp32'}, {sampling}",
        flush=True,
    )
    with tqdm(
        total=todo_images, unit="img", desc=desc, disable=not progress, file=sys.stderr
    ) as bar:
        for i in todo:
            t0 = time.perf_counter()
            start, stop = bounds[i]
            images = _generate_chunk(
                model,
                tokenizer,
                labels[start:stop],
                sampling=sampling,
                generator=chunk_generator(seed, i, device),
                device=device,
                amp_dtype=amp_dtype,
                compile=compile,
            )
            seconds = np.float64(time.perf_counter() - t0)  # .cpu() above synchronised
            write_npz(
                chunk_dir / CHUNK_NAME.format(i),
                {"images": images, "labels": labels[start:stop], "seconds": seconds},
            )
            bar.update(stop - start)


def sample(
    checkpoint: str | os.PathLike,
    tokenizer: str | os.PathLike,
    out: str | os.PathLike,
    *,
    num_per_class: int = PAPER_NUM_PER_CLASS,
    num_classes: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    seed: int = 0,
    preset: str | None = None,
    guidance_scale: float | None = None,
    guidance_power: float | None = None,
    guidance_schedule: str | None = None,
    guidance_sweep: dict | None = None,
    temperature: float | None = None,
    order: str | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    device: str = "auto",
    dtype: str = "fp32",
    compile: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    grid_path: str | os.PathLike | None = None,
    merge_timeout_s: float = 6 * 3600.0,
    keep_chunks: bool = False,
    progress: bool = True,
    check_extractor: str | None = None,
    extractor_weights: str | os.PathLike | None = None,
) -> dict | None:
    """Generate `num_per_class` images for each of `num_classes` classes into `out` (.npz).

    checkpoint: our `rar-train/1` checkpoint or an official `rar_*.bin`; tokenizer: any file
    `rar.tokenizer.load_tokenizer` reads (the official `maskgit-vqgan-imagenet-f16-256.bin`).
    num_classes: default the model's. chunk_size: images per chunk (one generate call; the
        chunk layout and the seed fix the samples, so keep it when resuming).
    seed: fixes the label order (`class_labels`) and every chunk's generator.
    preset / guidance_scale / guidance_power / guidance_schedule / temperature / order /
        top_k / top_p: see `resolve_sampling`; the preset defaults to the model size's
        (rar_b ... rar_xxl).
    guidance_sweep: the guidance sweep that chose `guidance_scale` (`rar.sweep`), recorded
        in samples.json and from there in metrics.json.
    dtype: "fp32", "bf16" (autocast for the transformer) or "auto" (bf16 on GPU).
    compile: torch.compile the decode step (GPU). rank / world_size: default from the
        environment (torchrun or SLURM); this process makes chunks i % world_size == rank.
    check_extractor / extractor_weights: fail at once, before sampling, when `rar evaluate`
        would not find that feature extractor's weights (`rar.evaluate.check_extractor_available`).

    Writes `out` (`arr_0` (N, H, W, 3) uint8, `labels` (N,) int64, class-interleaved: the ADM
    layout of the module docstring), `grid_path` (default
    `grid.png` beside `out`) and `samples.json` (`out` with suffix .json). Returns that JSON
    as a dict from the process that merged (rank 0), None from the others.
    """
    if check_extractor is not None:
        from rar.extractors import check_extractor_available

        check_extractor_available(check_extractor, extractor_weights)

    from rar.runtime import DistEnv

    env = DistEnv.from_environ()
    rank = env.rank if rank is None else rank
    world_size = env.world_size if world_size is None else world_size
    out = Path(out)
    info_path = info_path_for(out)
    grid_path = Path(grid_path) if grid_path is not None else out.with_name("grid.png")
    chunk_dir = chunk_dir_for(out)
    dev = resolve_device(device, env.local_rank)
    amp_dtype = _amp_dtype(dtype, dev)
    started = time.perf_counter()

    model, model_desc = load_generator(checkpoint)
    settings, preset_used = resolve_sampling(
        model_desc["model_size"],
        preset=preset,
        guidance_scale=guidance_scale,
        guidance_power=guidance_power,
        guidance_schedule=guidance_schedule,
        temperature=temperature,
        order=order,
        top_k=top_k,
        top_p=top_p,
    )
    num_classes = model.config.num_classes if num_classes is None else num_classes
    if not 0 < num_classes <= model.config.num_classes:
        raise ValueError(f"num_classes {num_classes} must be in 1..{model.config.num_classes}")
    labels = class_labels(num_classes, num_per_class, seed=seed)
    total = num_chunks(len(labels), chunk_size)
    # Everything that determines the images; a resume must match it exactly.
    plan = {
        "format": SAMPLES_FORMAT,
        "checkpoint_sha256": sha256_file(checkpoint),
        "tokenizer_sha256": sha256_file(tokenizer),
        "num_classes": num_classes,
        "num_per_class": num_per_class,
        "chunk_size": chunk_size,
        "seed": seed,
        "sampling": dataclasses.asdict(settings),
        "dtype": "bf16" if amp_dtype is not None else "fp32",
    }
    if out.exists() and info_path.exists():
        info = json.loads(info_path.read_text())
        old = info.get("plan") or {}
        if old == plan:
            print(f"{out} is complete with these settings; nothing to do", flush=True)
            return info if rank == 0 else None
        if old.get("format") != SAMPLES_FORMAT:
            print(
                f"{out} has the layout {old.get('format')!r}, not {SAMPLES_FORMAT!r} "
                "(class-interleaved); sampling again",
                flush=True,
            )
        else:
            print(f"{out} was made with other settings; sampling again", flush=True)

    from rar.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    if tok.codebook_size != model.config.codebook_size:
        raise ValueError(
            f"tokenizer codebook {tok.codebook_size} != model codebook "
            f"{model.config.codebook_size}: {tokenizer} does not belong to {checkpoint}"
        )
    model.to(dev)
    tok.to(dev)
    chunk_dir.mkdir(parents=True, exist_ok=True)
    _check_plan(chunk_dir, plan)

    _make_chunks(
        model,
        tok,
        labels,
        chunk_dir=chunk_dir,
        chunks=chunks_of_rank(total, rank, world_size),
        chunk_size=chunk_size,
        seed=seed,
        sampling=settings,
        device=dev,
        amp_dtype=amp_dtype,
        compile=compile,
        progress=progress,
        desc=f"sample[{rank}/{world_size}]",
    )
    if rank != 0:
        return None
    missing = _wait_for_chunks(chunk_dir, total, merge_timeout_s)
    if missing:
        raise TimeoutError(
            f"{len(missing)} chunks still missing after {merge_timeout_s:.0f} s (e.g. "
            f"{missing[:5]}); rerun `rar sample` with the same settings to finish them"
        )
    info = _merge(
        out,
        chunk_dir,
        total=total,
        chunk_size=chunk_size,
        labels=labels,
        grid_path=grid_path,
        num_classes=num_classes,
        num_per_class=num_per_class,
    )
    info.update(
        plan=plan,
        preset=preset_used,
        checkpoint=str(checkpoint),
        checkpoint_sha256=plan["checkpoint_sha256"],
        checkpoint_info={k: v for k, v in model_desc.items() if k != "model_config"},
        model_config=model_desc["model_config"],
        tokenizer=str(tokenizer),
        tokenizer_sha256=plan["tokenizer_sha256"],
        tokenizer_identity=tok.identity(),
        sampling=plan["sampling"],
        seed=seed,
        dtype=plan["dtype"],
        compile=compile,
        device=str(dev),
        world_size=world_size,
        guidance_sweep=guidance_sweep,
        wall_seconds_merging_process=round(time.perf_counter() - started, 3),
        torch_version=torch.__version__,
    )
    write_json(info_path, info)
    if not keep_chunks:
        for f in chunk_dir.iterdir():
            f.unlink()
        chunk_dir.rmdir()
    print(f"wrote {out} ({info['num_samples']} images), {grid_path}, {info_path}", flush=True)
    return info


def _wait_for_chunks(chunk_dir: Path, total: int, timeout_s: float) -> list[int]:
    """Poll until every chunk exists or `timeout_s` passes -> the chunks still missing.

    Files, not DiT's `dist.barrier()`: the processes may be separate jobs (an array, a rerun
    of one failed rank) that share no process group, only the file system."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [i for i in range(total) if not (chunk_dir / CHUNK_NAME.format(i)).exists()]
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))


def _merge(
    out: Path,
    chunk_dir: Path,
    *,
    total: int,
    chunk_size: int,
    labels: np.ndarray,
    grid_path: Path,
    num_classes: int,
    num_per_class: int,
) -> dict:
    """Concatenate the chunks into `out`, streaming; write the grid; return counts and times."""
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
    shown = save_grid(images, labels, grid_path, num_classes=num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    return {
        "format": SAMPLES_FORMAT,
        "samples": out.name,
        "samples_sha256": sha256_file(out),
        "num_samples": len(labels),
        "num_classes": num_classes,
        "num_per_class": num_per_class,
        "per_class_min": int(counts.min()),
        "per_class_max": int(counts.max()),
        "image_size": list(shape[1:3]),
        "chunk_size": chunk_size,
        "num_chunks": total,
        "grid": grid_path.name,
        "grid_classes": shown,
        "sampling_seconds": round(seconds, 3),
        "images_per_s": round(len(labels) / seconds, 3) if seconds > 0 else None,
    }
