"""`rar sample`: class-conditional samples for FID, in the layout the ADM evaluation suite reads.

The paper's numbers (RAR Table 1-6) come from 50,000 images, 50 per ImageNet class, scored by
the ADM suite (Dhariwal & Nichol, guided-diffusion `evaluations/evaluator.py`). This module
writes exactly that set: the settings (a preset, overrides, a guidance sweep's scale), the
generation of this process's chunks, and, from rank 0 (or any later single-process call), the
merge into `<out>`, its grid and `<out stem>.json` (samples.json). The layout, the per-chunk
seeds and the chunk files are rar.sample_chunks': class-interleaved labels, chunks of
`chunk_size` images (DEFAULT_CHUNK_SIZE, the study schema's `sampling.chunk_size`) seeded by
their index alone, resumable after a crash, byte-identical for any number of processes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rar import presets
from rar.checkpoint import load_generator
from rar.files import read_json, sha256_file, write_npz
from rar.generate import SAMPLING_PRESETS, SamplingConfig, generate
from rar.model import RAR
from rar.results import write_samples_info
from rar.runtime import autocast_dtype, resolve_device
from rar.sample_chunks import (
    CHUNK_NAME,
    SAMPLES_FORMAT,
    check_plan,
    chunk_bounds,
    chunk_dir_for,
    chunk_generator,
    chunks_of_rank,
    class_labels,
    drop_finished,
    keep_finished,
    merge_chunks,
    num_chunks,
    restore_finished,
    wait_for_chunks,
)

PAPER_NUM_PER_CLASS = 50  # RAR §4.1 / ADM: 50,000 samples = 50 per ImageNet class
# Images per chunk (rar.presets: the one default of sample(), `rar sample` and the study
# schema's `sampling.chunk_size`, which a test holds equal).
DEFAULT_CHUNK_SIZE = presets.DEFAULT_CHUNK_SIZE
GUIDANCE_SCALE_KEY = "guidance_scale"  # the key `--guidance-scale-from` reads (rar sweep-guidance)

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
# The plan: what determines the images
# ##########################################################################################


def sampling_plan(
    checkpoint: str | os.PathLike,
    tokenizer: str | os.PathLike,
    *,
    num_classes: int,
    num_per_class: int,
    chunk_size: int,
    seed: int,
    sampling: SamplingConfig,
    amp_dtype: torch.dtype | None,
) -> dict:
    """Everything that determines the images (the files by their hashes); a resume must
    match it exactly, and an output made with it is complete (`completed_samples`)."""
    return {
        "format": SAMPLES_FORMAT,
        "checkpoint_sha256": sha256_file(checkpoint),
        "tokenizer_sha256": sha256_file(tokenizer),
        "num_classes": num_classes,
        "num_per_class": num_per_class,
        "chunk_size": chunk_size,
        "seed": seed,
        "sampling": dataclasses.asdict(sampling),
        "dtype": "bf16" if amp_dtype is not None else "fp32",
    }


def completed_samples(out: Path, plan: dict) -> dict | None:
    """samples.json of `out` when `out` exists and was made with `plan`, so there is nothing
    to do; else None, saying why `out` is sampled again when it exists."""
    info_path = info_path_for(out)
    if not (out.exists() and info_path.exists()):
        return None
    info = read_json(info_path)
    old = info.get("plan") or {}
    if old == plan:
        print(f"{out} is complete with these settings; nothing to do", flush=True)
        return info
    if old.get("format") != SAMPLES_FORMAT:
        print(
            f"{out} has the layout {old.get('format')!r}, not {SAMPLES_FORMAT!r} "
            "(class-interleaved); sampling again",
            flush=True,
        )
    else:
        print(f"{out} was made with other settings; sampling again", flush=True)
    return None


def _classes_of(model: RAR, num_classes: int | None) -> int:
    """The classes to sample: `num_classes`, at most the model's (default: all of them)."""
    num_classes = model.config.num_classes if num_classes is None else num_classes
    if not 0 < num_classes <= model.config.num_classes:
        raise ValueError(f"num_classes {num_classes} must be in 1..{model.config.num_classes}")
    return num_classes


def _tokenizer_for(model: RAR, tokenizer: str | os.PathLike, checkpoint: str | os.PathLike):
    """The tokenizer file `tokenizer`, checked to decode `model`'s codes."""
    from rar.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    if tok.codebook_size != model.config.codebook_size:
        raise ValueError(
            f"tokenizer codebook {tok.codebook_size} != model codebook "
            f"{model.config.codebook_size}: {tokenizer} does not belong to {checkpoint}"
        )
    return tok


# ##########################################################################################
# Sampling
# ##########################################################################################


def _kept_outputs(out: Path, grid_path: str | os.PathLike | None, plan: dict, rank: int) -> None:
    """Outputs the workflow deleted after their merge come back from the links kept beside
    the chunks (rank 0); a finished set of other settings is dropped."""
    grid = Path(grid_path) if grid_path is not None else out.with_name("grid.png")
    if rank == 0:
        restore_finished(chunk_dir_for(out), [out, grid, info_path_for(out)], plan)
    drop_finished(chunk_dir_for(out), plan)


def info_path_for(out: str | os.PathLike) -> Path:
    """The settings file beside `out`: `samples.npz` -> `samples.json`."""
    return Path(out).with_suffix(".json")


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
    guidance_sweep: dict | None = None,
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
    **overrides,
) -> dict | None:
    """Generate `num_per_class` images for each of `num_classes` classes into `out` (.npz).

    checkpoint: our `rar-train/1` checkpoint or an official `rar_*.bin`; tokenizer: any file
    `rar.tokenizer.load_tokenizer` reads (the official `maskgit-vqgan-imagenet-f16-256.bin`).
    num_classes: default the model's. chunk_size: images per chunk (one generate call; the
        chunk layout and the seed fix the samples, so keep it when resuming).
    seed: fixes the label order (`class_labels`) and every chunk's generator.
    preset, overrides (guidance_scale, guidance_power, guidance_schedule, temperature, order,
        top_k, top_p): `resolve_sampling`; the preset defaults to the model size's.
    guidance_sweep: the guidance sweep that chose `guidance_scale` (`rar.sweep`), recorded
        in samples.json and from there in metrics.json.
    dtype: "fp32", "bf16" (autocast for the transformer) or "auto" (bf16 on GPU).
    compile: torch.compile the decode step (GPU). rank / world_size: default from the
        environment (torchrun or SLURM); this process makes chunks i % world_size == rank.
    check_extractor / extractor_weights: fail before sampling if `rar evaluate` would lack them.

    Writes `out` (`arr_0` (N, H, W, 3) uint8, `labels` (N,) int64, class-interleaved: the ADM
    layout of rar.sample_chunks), `grid_path` (default `grid.png` beside `out`) and
    `samples.json` (`out` with suffix .json). Returns that JSON as a dict from the process
    that merged (rank 0), None from the others.
    """
    if check_extractor is not None:
        from rar.extractors import check_extractor_available

        check_extractor_available(check_extractor, extractor_weights)
    rank, world_size, dev = _placement(rank, world_size, device)
    amp_dtype, out, started = autocast_dtype(dtype, dev), Path(out), time.perf_counter()
    model, model_desc = load_generator(checkpoint)
    settings, preset_used = resolve_sampling(model_desc["model_size"], preset=preset, **overrides)
    num_classes = _classes_of(model, num_classes)
    labels = class_labels(num_classes, num_per_class, seed=seed)
    plan = sampling_plan(
        checkpoint, tokenizer, num_classes=num_classes, num_per_class=num_per_class,
        chunk_size=chunk_size, seed=seed, sampling=settings, amp_dtype=amp_dtype,
    )  # fmt: skip
    _kept_outputs(out, grid_path, plan, rank)
    if (info := completed_samples(out, plan)) is not None:
        return info if rank == 0 else None
    tok = _tokenizer_for(model, tokenizer, checkpoint).to(dev)
    check_plan(chunk_dir_for(out), plan)
    _make_chunks(
        model.to(dev), tok, labels, chunk_dir=chunk_dir_for(out),
        chunks=chunks_of_rank(num_chunks(len(labels), chunk_size), rank, world_size),
        chunk_size=chunk_size, seed=seed, sampling=settings, device=dev, amp_dtype=amp_dtype,
        compile=compile, progress=progress, desc=f"sample[{rank}/{world_size}]",
    )  # fmt: skip
    if rank != 0:
        return None
    provenance = _provenance(
        plan, model_desc, tok, preset=preset_used, checkpoint=checkpoint, tokenizer=tokenizer,
        compile=compile, device=dev, world_size=world_size, guidance_sweep=guidance_sweep,
    )  # fmt: skip
    return _finish(
        out, plan, labels, grid_path=grid_path, provenance=provenance, started=started,
        merge_timeout_s=merge_timeout_s, keep_chunks=keep_chunks,
    )  # fmt: skip


def _placement(
    rank: int | None, world_size: int | None, device: str
) -> tuple[int, int, torch.device]:
    """This process's rank, the world size (default: the environment's, torchrun or SLURM)
    and its device."""
    from rar.runtime import DistEnv

    env = DistEnv.from_environ()
    rank = env.rank if rank is None else rank
    world_size = env.world_size if world_size is None else world_size
    return rank, world_size, resolve_device(device, env.local_rank)


def _provenance(
    plan: dict,
    model_desc: dict,
    tok,
    *,
    preset: str | None,
    checkpoint: str | os.PathLike,
    tokenizer: str | os.PathLike,
    compile: bool,
    device: torch.device,
    world_size: int,
    guidance_sweep: dict | None,
) -> dict:
    """samples.json's record of how the samples were made, after the merge's counts."""
    return {
        "plan": plan,
        "preset": preset,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": plan["checkpoint_sha256"],
        "checkpoint_info": {k: v for k, v in model_desc.items() if k != "model_config"},
        "model_config": model_desc["model_config"],
        "tokenizer": str(tokenizer),
        "tokenizer_sha256": plan["tokenizer_sha256"],
        "tokenizer_identity": tok.identity(),
        "sampling": plan["sampling"],
        "seed": plan["seed"],
        "dtype": plan["dtype"],
        "compile": compile,
        "device": str(device),
        "world_size": world_size,
        "guidance_sweep": guidance_sweep,
    }


def _finish(
    out: Path,
    plan: dict,
    labels: np.ndarray,
    *,
    grid_path: str | os.PathLike | None,
    provenance: dict,
    started: float,
    merge_timeout_s: float,
    keep_chunks: bool,
) -> dict:
    """Rank 0's end: wait for every process's chunks, merge them into `out` and its grid
    (`grid_path`, default `grid.png` beside `out`), write samples.json (the merge's counts,
    then `provenance`), delete the chunks unless `keep_chunks`. Returns samples.json."""
    chunk_dir, info_path = chunk_dir_for(out), info_path_for(out)
    grid = Path(grid_path) if grid_path is not None else out.with_name("grid.png")
    total = num_chunks(len(labels), plan["chunk_size"])
    missing = wait_for_chunks(chunk_dir, total, merge_timeout_s)
    if missing:
        raise TimeoutError(
            f"{len(missing)} chunks still missing after {merge_timeout_s:.0f} s (e.g. "
            f"{missing[:5]}); rerun `rar sample` with the same settings to finish them"
        )
    info = merge_chunks(out, chunk_dir, plan, labels, grid)
    info.update(
        provenance,
        wall_seconds_merging_process=round(time.perf_counter() - started, 3),
        torch_version=torch.__version__,
    )
    write_samples_info(out, info)
    if not keep_chunks:
        keep_finished(chunk_dir, [out, grid, info_path])
    print(f"wrote {out} ({info['num_samples']} images), {grid}, {info_path}", flush=True)
    return info
