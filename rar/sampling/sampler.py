"""`rar sample`: class-conditional samples for FID, in the layout the ADM evaluation suite reads.

The paper's numbers (RAR Table 1-6) come from 50,000 images, 50 per ImageNet class, scored by
the ADM suite (Dhariwal & Nichol, guided-diffusion `evaluations/evaluator.py`). This module
writes exactly that set: the settings (a preset, overrides, a guidance sweep's scale), the
generation of this process's chunks, and, from rank 0 (or any later single-process call), the
merge into `<out>`, its grid and `<out stem>.json` (samples.json). The layout, the per-chunk
seeds and the chunk files are rar.sampling.chunks': class-interleaved labels, chunks of
`chunk_size` images (rar.settings.presets.DEFAULT_CHUNK_SIZE, the study schema's
`sampling.chunk_size`) seeded by their index alone, resumable after a crash, byte-identical
for any number of processes.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rar.experiments.results import write_samples_info
from rar.files import read_json, sha256_file, write_npz
from rar.model.checkpoint import load_generator
from rar.model.generate import generate
from rar.model.transformer import RAR
from rar.runtime import autocast_dtype, resolve_device
from rar.sampling.chunks import (
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
    without_retired,
)
from rar.settings.stages import SAMPLING_FIELDS, SampleSettings, SamplingConfig, resolve_sampling

# ##########################################################################################
# The plan: what determines the images
# ##########################################################################################


def sampling_plan(
    checkpoint: str | os.PathLike,
    tokenizer: str | os.PathLike,
    settings: SampleSettings,
    *,
    num_classes: int,
    sampling: SamplingConfig,
    dtype: torch.dtype | None,
) -> dict:
    """Everything that determines the images (the files by their hashes; the settings' counts,
    chunk size and seed); a resume must match it exactly, and an output made with it is
    complete (`completed_samples`)."""
    return {
        "format": SAMPLES_FORMAT,
        "checkpoint_sha256": sha256_file(checkpoint),
        "tokenizer_sha256": sha256_file(tokenizer),
        "num_classes": num_classes,
        "num_per_class": settings.num_per_class,
        "chunk_size": settings.chunk_size,
        "seed": settings.seed,
        "sampling": dataclasses.asdict(sampling),
        "dtype": "bf16" if dtype is not None else "fp32",
    }


def completed_samples(out: Path, plan: dict) -> dict | None:
    """samples.json of `out` when `out` exists and was made with `plan`, so there is nothing
    to do; else None, saying why `out` is sampled again when it exists."""
    info_path = info_path_for(out)
    if not (out.exists() and info_path.exists()):
        return None
    info = read_json(info_path)
    old = without_retired(info.get("plan") or {})
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
    from rar.model.tokenizer import load_tokenizer

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
    dtype: torch.dtype | None,
    compile: bool,
) -> np.ndarray:
    """labels (n,) -> images (n, H, W, 3) uint8: generated with the transformer's weights and
    KV cache in `dtype` (None: fp32; bf16: the decode engine's bf16 copy), decoded in fp32."""
    from rar.model.tokenizer import decode_to_uint8

    ids = generate(
        model,
        torch.from_numpy(labels).to(device),
        sampling,
        generator=generator,
        dtype=dtype,
        compile=compile,
    )  # (n, N) raster-order codes
    return decode_to_uint8(tokenizer, ids).numpy()


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
    dtype: torch.dtype | None,
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
        f"{device}, {'bf16' if dtype else 'fp32'}, {sampling}",
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
                dtype=dtype,
                compile=compile,
            )
            seconds = np.float64(time.perf_counter() - t0)  # .cpu() above synchronised
            write_npz(
                chunk_dir / CHUNK_NAME.format(i),
                {"images": images, "labels": labels[start:stop], "seconds": seconds},
            )
            bar.update(stop - start)


def sample_arguments(settings: SampleSettings | None, changes: dict) -> tuple[SampleSettings, dict]:
    """`sample`'s settings and its preset's overrides from its arguments: each change that
    is a SampleSettings field replaces `settings`' (None: its defaults), each that is a
    SamplingConfig field overrides the preset (None: keep). TypeError on any other name."""
    names = {f.name for f in dataclasses.fields(SampleSettings)}
    unknown = sorted(set(changes) - names - set(SAMPLING_FIELDS))
    if unknown:
        raise TypeError(f"sample() got unknown setting(s) {', '.join(unknown)}")
    settings = dataclasses.replace(
        settings or SampleSettings(), **{k: v for k, v in changes.items() if k in names}
    )
    return settings, {k: v for k, v in changes.items() if k in SAMPLING_FIELDS}


def sample(
    checkpoint: str | os.PathLike,
    tokenizer: str | os.PathLike,
    out: str | os.PathLike,
    settings: SampleSettings | None = None,
    *,
    guidance_sweep: dict | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    **changes,
) -> dict | None:
    """Generate `num_per_class` images for each of `num_classes` classes into `out` (.npz).

    checkpoint: our `rar-train/1` checkpoint or an official `rar_*.bin`; tokenizer: any file
    `rar.model.tokenizer.load_tokenizer` reads (the official `maskgit-vqgan-imagenet-f16-256.bin`).
    settings: how the set is drawn (rar.settings.stages.SampleSettings, its fields' help; default:
        its defaults). The chunk layout and the seed fix the samples: keep them on resume.
    changes: by name, SampleSettings fields replacing `settings`' and SamplingConfig fields
        (guidance_scale, temperature, order, guidance_schedule, guidance_power) overriding the
        preset (`resolve_sampling`; the preset defaults to the model size's).
    guidance_sweep: the guidance sweep that chose `guidance_scale` (`rar.sampling.sweep`), recorded
        in samples.json and from there in metrics.json.
    rank / world_size: default from the environment (torchrun or SLURM); this process makes
        chunks i % world_size == rank.

    Writes `out` (`arr_0` (N, H, W, 3) uint8, `labels` (N,) int64, class-interleaved: the ADM
    layout of rar.sampling.chunks), `grid_path` (default `grid.png` beside `out`) and
    `samples.json` (`out` with suffix .json). Returns that JSON as a dict from the process
    that merged (rank 0), None from the others.
    """
    s, overrides = sample_arguments(settings, changes)
    if s.check_extractor is not None:
        from rar.evaluation.extractors import check_extractor_available

        check_extractor_available(s.check_extractor, s.extractor_weights)
    rank, world_size, dev = _placement(rank, world_size, s.device)
    dtype, out, started = autocast_dtype(s.dtype, dev), Path(out), time.perf_counter()
    model, model_desc = load_generator(checkpoint)
    sampling, preset = resolve_sampling(model_desc["model_size"], s.preset, overrides)
    num_classes = _classes_of(model, s.num_classes)
    labels = class_labels(num_classes, s.num_per_class, seed=s.seed)
    plan = sampling_plan(
        checkpoint, tokenizer, s, num_classes=num_classes, sampling=sampling, dtype=dtype
    )
    _kept_outputs(out, s.grid_path, plan, rank)
    if (info := completed_samples(out, plan)) is not None:
        return info if rank == 0 else None
    tok = _tokenizer_for(model, tokenizer, checkpoint).to(dev)
    check_plan(chunk_dir_for(out), plan)
    _make_chunks(
        model.to(dev),
        tok,
        labels,
        chunk_dir=chunk_dir_for(out),
        chunks=chunks_of_rank(num_chunks(len(labels), s.chunk_size), rank, world_size),
        chunk_size=s.chunk_size,
        seed=s.seed,
        sampling=sampling,
        device=dev,
        dtype=dtype,
        compile=s.compile,
        progress=progress,
        desc=f"sample[{rank}/{world_size}]",
    )
    if rank != 0:
        return None
    provenance = _provenance(
        plan,
        model_desc,
        tok,
        preset=preset,
        checkpoint=checkpoint,
        tokenizer=tokenizer,
        compile=s.compile,
        device=dev,
        world_size=world_size,
        guidance_sweep=guidance_sweep,
    )
    return _finish(out, plan, labels, settings=s, provenance=provenance, started=started)


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
    settings: SampleSettings,
    provenance: dict,
    started: float,
) -> dict:
    """Rank 0's end: wait for every process's chunks (settings.merge_timeout_s), merge them
    into `out` and its grid (settings.grid_path, default `grid.png` beside `out`), write
    samples.json (the merge's counts, then `provenance`), delete the chunks unless
    settings.keep_chunks. Returns samples.json."""
    chunk_dir, info_path = chunk_dir_for(out), info_path_for(out)
    merge_timeout_s, grid_path = settings.merge_timeout_s, settings.grid_path
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
    if not settings.keep_chunks:
        keep_finished(chunk_dir, [out, grid, info_path])
    print(f"wrote {out} ({info['num_samples']} images), {grid}, {info_path}", flush=True)
    return info
