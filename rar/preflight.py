"""`rar preflight`: the whole grid rehearsed at toy scale on the user's own cluster.

Before a study's thousands of GPU-hours are submitted, this runs every stage of its DAG once,
small, through the same launcher settings as the grid (the profile's `<stage>.yaml`), and
writes `<out>/report.md`: one line per check, PASS / FAIL / SKIP, what was measured, and for a
FAIL the fix (the config key, the profile file, the missing file).

1. Before anything is submitted: every file the config names exists, loads and is the
   expected thing (`rar.resources`: the released RAR and MaskGIT-VQGAN state dicts have the
   official keys and shapes, the Inception weights their published sha256 prefix, ADM's
   reference batch its arrays and shapes); ImageNet's folder has the configured number of
   class folders and images; each stage's launcher settings fit the cluster (the partition
   exists, its nodes have the GPUs asked for, the time limit fits).
2. The stages, each one job of `rar.launch` with the stage's settings (time limit capped):
   a handful of images (linked from ImageNet, or the demo's own), tokenized with the study's
   tokenizer; a few optimizer steps of the study's model size on the study's layout (nodes x
   GPUs, DDP, the study's precision and compile setting) in which the job is stopped by the
   time-limit signal SLURM sends (USR2, here sent by the job to itself) and requeued, and the
   resumed run must reach the step, and on the CPU the very weights, of an uninterrupted one;
   a few images sampled with the KV cache; scored with the study's extractor; a table made.
3. Throughput on the real nodes: training images/s per GPU at the study's micro-batch for
   each model size of the study, and sampling images/s per GPU, written to
   `<out>/throughput.json`, where `rar plan` reads them (`rar.experiments.measured_throughput`):
   its GPU-hours then come from the user's hardware, the config's figures staying as the
   estimates for whatever was not measured.

A stage whose inputs failed is skipped (SKIP, naming what failed). Every stage writes under
`<out>/<stage>/`; a new preflight starts from an empty `<out>` (its own folders only).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from rar.resources import (
    Needed,
    adm_reference_problems,
    count_images,
    npz_arrays,
    study_resources,
)

STAGES = ("tokenize", "train", "sample", "evaluate")
THROUGHPUT_FORMAT = "rar-throughput/1"
# Folders and files of <out> that a preflight writes (and removes before it starts again).
OWN_ENTRIES = (
    "images", "tokenizer", "tokenize", "data", "train", "sample", "evaluate", "submitit", "cache",
    "report.md", "checks.json", "throughput.json", "table.csv", "table.md",
)  # fmt: skip


# ##########################################################################################
# Check records and the report
# ##########################################################################################


@dataclass
class Check:
    """One line of the report. ok: True (PASS), False (FAIL) or None (SKIP: not run, because
    `measured` says what it needed)."""

    name: str
    ok: bool | None
    measured: str
    fix: str = ""

    @property
    def status(self) -> str:
        return {True: "PASS", False: "FAIL", None: "SKIP"}[self.ok]


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def format_report(checks: list[Check], *, title: str, context: list[str]) -> str:
    """Markdown: a title, the context lines, then one table row per check."""
    failed = sum(c.ok is False for c in checks)
    verdict = "all checks passed" if not failed else f"{failed} check(s) FAILED"
    lines = [f"# {title}", "", *context, "", f"**{verdict}**", ""]
    lines += ["| result | check | measured | fix |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {c.status} | {_cell(c.name)} | {_cell(c.measured)} | {_cell(c.fix)} |" for c in checks
    ]
    return "\n".join(lines) + "\n"


def format_lines(checks: list[Check]) -> str:
    """The report as plain lines for a terminal: `PASS  name: measured` (+ `fix:` on a FAIL)."""
    out = []
    for c in checks:
        out.append(f"{c.status}  {c.name}: {c.measured}")
        if c.fix:
            out.append(f"      fix: {c.fix}")
    return "\n".join(out)


# ##########################################################################################
# Resources: before anything is submitted
# ##########################################################################################


def _missing_fix(needed: Needed, config_file: str) -> str:
    r = needed.resource
    return (
        f"missing file {needed.path} (config key {needed.key}): `rar fetch --config "
        f"{config_file} --only {r.name}`, or download {r.source_url()} to {needed.path}"
    )


def _compare_state_dict(found: dict, expected: dict, *, limit: int = 4) -> list[str]:
    """Differences between a loaded state dict and the expected {key: shape}."""
    problems = []
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:limit])})")
    if extra:
        problems.append(f"{len(extra)} unexpected keys (e.g. {', '.join(extra[:limit])})")
    shapes = [
        f"{k} {tuple(found[k].shape)} != {tuple(expected[k])}"
        for k in sorted(set(found) & set(expected))
        if tuple(getattr(found[k], "shape", ())) != tuple(expected[k])
    ]
    if shapes:
        problems.append(f"{len(shapes)} keys of another shape (e.g. {'; '.join(shapes[:limit])})")
    return problems


def expected_shapes(resource_kind: str, model: str | None = None) -> dict[str, tuple]:
    """{key: shape} of the released state dict, from our modules built on the meta device
    (tests/test_model.py and tests/test_tokenizer.py hold them equal to the release's)."""
    import torch

    with torch.device("meta"):
        if resource_kind == "rar":
            from rar.model import RAR, rar_config

            module = RAR(rar_config(model))  # the release: adaLN, 1000 classes, 1024 codes
        else:
            from rar.tokenizer import MaskGITVQGAN, MaskGITVQGANConfig

            module = MaskGITVQGAN(MaskGITVQGANConfig())
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def check_file(needed: Needed, *, config_file: str) -> Check:
    """One resource file: there, loadable, and the expected thing."""
    r, path = needed.resource, Path(needed.path)
    name = f"file {needed.key}"
    if not path.is_file():
        return Check(name, False, f"{path} does not exist", _missing_fix(needed, config_file))
    size = f"{path.stat().st_size / 2**20:,.1f} MiB"
    refetch = (
        f"{path} is not {r.what}: delete it and `rar fetch --config {config_file} --only "
        f"{r.name}`, or point config key {needed.key} at the right file"
    )
    if r.kind in ("rar", "maskgit_vqgan"):
        from rar.checkpoint import CheckpointError, load_file

        try:
            sd = load_file(path, what=r.what)
        except CheckpointError as err:
            return Check(name, False, str(err), refetch)
        problems = _compare_state_dict(sd, expected_shapes(r.kind, r.model))
        if problems:
            return Check(name, False, f"{path} ({size}): {'; '.join(problems)}", refetch)
        return Check(name, True, f"{path} ({size}): {len(sd)} keys, the official layout")
    if r.kind == "inception":
        from rar.io import sha256_file

        digest = sha256_file(path)
        if r.sha256_prefix and not digest.startswith(r.sha256_prefix):
            return Check(
                name, False, f"{path}: sha256 {digest[:12]}..., not {r.sha256_prefix}...", refetch
            )
        return Check(name, True, f"{path} ({size}): sha256 {digest[:12]}... as published")
    try:  # adm_reference
        arrays = npz_arrays(path)
    except ValueError as err:
        return Check(name, False, str(err), refetch)
    problems = adm_reference_problems(arrays)
    if problems:
        return Check(name, False, f"{path}: {'; '.join(problems)}", refetch)
    shapes = ", ".join(f"{k} {arrays[k][0]}" for k in ("arr_0", "mu", "sigma"))
    return Check(name, True, f"{path} ({size}): {shapes}")


def check_images(config: dict) -> Check | None:
    """ImageNet's folder (data.images): the configured class folders and image count. None
    for the demo, which makes its own images."""
    data = config["data"]
    if "demo" in data:
        return None
    folder = Path(data["images"])
    name = "images data.images"
    link = (
        f"config key data.images: link ImageNet's train split there (`ln -s "
        f"/path/to/imagenet/train {folder}`: {data['num_classes']:,} <wnid> folders of JPEGs)"
    )
    if not folder.is_dir():
        return Check(name, False, f"{folder} does not exist", link)
    classes, images, empty = count_images(folder)
    measured = f"{folder}: {classes:,} class folders, {images:,} images"
    problems = []
    if classes != data["num_classes"]:
        problems.append(f"{classes:,} class folders, data.num_classes is {data['num_classes']:,}")
    if images != data["source_images"]:
        problems.append(f"{images:,} images, data.source_images is {data['source_images']:,}")
    if empty:
        problems.append(f"{len(empty)} empty class folders (e.g. {empty[0]})")
    if problems:
        fix = (
            f"{'; '.join(problems)}: complete the copy of ImageNet's train split in {folder}, "
            "or set data.num_classes / data.source_images to what you train on"
        )
        return Check(name, False, measured, fix)
    return Check(name, True, measured)


def check_extractor(config: dict) -> Check:
    from rar.evaluate import ExtractorUnavailable, check_extractor_available

    ev = config["evaluation"]
    name = f"extractor {ev['extractor']}"
    try:
        path = check_extractor_available(ev["extractor"], ev.get("weights") or None)
    except ExtractorUnavailable as err:
        return Check(name, False, str(err).splitlines()[0], "config key evaluation.weights")
    return Check(name, True, f"weights {path or 'downloadable (torch-fidelity cache)'}")


# ##########################################################################################
# Launcher settings: do they fit the cluster?
# ##########################################################################################


def _slurm_minutes(text: str) -> float | None:
    """A SLURM time limit ("1-00:00:00", "2:00:00", "30:00", "infinite") in minutes."""
    if text in ("infinite", "UNLIMITED", "n/a", ""):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, minutes, seconds = parts[-3:]
    return (int(days or 0) * 24 + hours) * 60 + minutes + seconds / 60


def _gpus_of(gres: str) -> int:
    """GPUs per node in a sinfo %G field ("gpu:8", "gpu:a100:4(S:0-1)", "(null)")."""
    best = 0
    for item in gres.split(","):
        fields = item.split("(")[0].split(":")
        if fields[0] == "gpu" and fields[-1].isdigit():
            best = max(best, int(fields[-1]))
    return best


def slurm_partitions() -> dict[str, dict]:
    """{partition: {"nodes", "gpus" per node, "time_min" limit, "default"}} from sinfo."""
    out = subprocess.run(
        ["sinfo", "-h", "-o", "%P|%D|%G|%l"], capture_output=True, text=True, timeout=60,
        check=True,
    ).stdout  # fmt: skip
    parts: dict[str, dict] = {}
    for line in out.splitlines():
        name, nodes, gres, limit = line.split("|")
        default = name.endswith("*")
        name = name.rstrip("*")
        p = parts.setdefault(name, {"nodes": 0, "gpus": 0, "time_min": None, "default": False})
        p["nodes"] += int(nodes)
        p["gpus"] = max(p["gpus"], _gpus_of(gres))
        p["time_min"] = _slurm_minutes(limit)
        p["default"] = p["default"] or default
    return parts


def check_launcher(stage: str, launcher, source: str, *, grid_time_min: int) -> Check:
    """Whether a stage's launcher settings fit this machine or cluster: SLURM's commands, the
    partition, GPUs per node, nodes and the grid's time limit; local GPUs."""
    name = f"launcher {stage}"
    edit = f"edit {source}" if source.endswith(".yaml") else f"set {source}"
    if launcher.backend == "debug":
        return Check(name, True, "debug: in the preflight's own process")
    if launcher.backend == "local":
        if launcher.gpus_per_node:
            import torch

            have = torch.cuda.device_count()
            if have < launcher.gpus_per_node:
                return Check(
                    name, False, f"gpus_per_node {launcher.gpus_per_node}, {have} GPUs here",
                    f"{edit}: key gpus_per_node (at most {have})",
                )  # fmt: skip
        return Check(name, True, f"local: {launcher.tasks} process(es), {source}")
    missing = [t for t in ("sbatch", "srun", "sacct", "sinfo") if shutil.which(t) is None]
    if missing:
        return Check(
            name, False, f"no {', '.join(missing)} on the PATH",
            "run on the cluster's login node, or use the local profile (--launcher local)",
        )  # fmt: skip
    try:
        parts = slurm_partitions()
    except (OSError, subprocess.SubprocessError) as err:
        return Check(name, False, f"sinfo failed: {err}", "check that SLURM answers (sinfo)")
    partition = launcher.partition or next((p for p, v in parts.items() if v["default"]), None)
    if partition not in parts:
        known = ", ".join(f"{p}{'*' if v['default'] else ''}" for p, v in parts.items())
        return Check(
            name, False, f"partition {launcher.partition!r} does not exist (this cluster has: "
            f"{known})", f"{edit}: key partition (one of {', '.join(parts)})",
        )  # fmt: skip
    p = parts[partition]
    problems = []
    if launcher.gpus_per_node > p["gpus"]:
        problems.append(
            (f"gpus_per_node {launcher.gpus_per_node} but nodes of {partition} have {p['gpus']}",
             f"key gpus_per_node (at most {p['gpus']}) or partition")
        )  # fmt: skip
    if launcher.nodes > p["nodes"]:
        problems.append(
            (f"nodes {launcher.nodes} but {partition} has {p['nodes']}",
             f"key nodes (at most {p['nodes']})")
        )  # fmt: skip
    if p["time_min"] is not None and grid_time_min > p["time_min"]:
        problems.append(
            (f"time_min {grid_time_min} but {partition} allows {p['time_min']:g}",
             f"key time_min (at most {p['time_min']:g}; jobs requeue at their limit)")
        )  # fmt: skip
    measured = (
        f"partition {partition} ({p['nodes']} nodes, {p['gpus']} GPUs each); asks "
        f"{launcher.nodes} x {launcher.tasks} task(s), {launcher.gpus_per_node} GPU(s)/node"
    )
    if problems:
        return Check(
            name, False, f"{measured}: {'; '.join(m for m, _ in problems)}",
            f"{edit}: {'; '.join(f for _, f in problems)}",
        )  # fmt: skip
    return Check(name, True, f"{measured}, from {source}")


def stage_launchers(
    backend: str, launcher_dir: str, *, folder: Path, time_cap_min: int
) -> tuple[dict[str, Any], dict[str, str], dict[str, int], list[Check]]:
    """Per stage: the launcher settings the grid uses (`<launcher_dir>/<stage>.yaml`, the
    backend from the profile, as `workflow/rules/common.smk::launcher_args`), adapted for a
    rehearsal: the time limit capped at `time_cap_min`, at least two requeues for training,
    quick polling. Returns (settings, their source, the grid's own time limits, failed
    checks of files that do not load)."""
    from rar.launch import LauncherConfig

    settings, sources, grid_limits, failures = {}, {}, {}, []
    for stage in STAGES:
        source = f"{launcher_dir}/{stage}.yaml" if launcher_dir else f"--launcher {backend}"
        try:
            base = LauncherConfig.load(source) if launcher_dir else LauncherConfig()
            cfg = base.override(backend=backend)
        except (OSError, ValueError) as err:
            failures.append(Check(f"launcher {stage}", False, str(err), f"edit {source}"))
            continue
        grid_limits[stage] = cfg.time_min
        time_min = min(cfg.time_min, time_cap_min)
        cfg = cfg.override(
            time_min=time_min,
            signal_delay_s=min(cfg.signal_delay_s, time_min * 30),
            max_requeues=max(cfg.max_requeues, 2) if stage == "train" else cfg.max_requeues,
            poll_s=min(cfg.poll_s, 2.0),
            folder=cfg.folder if launcher_dir else str(folder),
        )
        settings[stage], sources[stage] = cfg, source
    return settings, sources, grid_limits, failures


# ##########################################################################################
# The jobs (run by rar.launch on the nodes; every argument is a plain value)
# ##########################################################################################


def read_tokens(shard_dir: str, rows: int):
    """Every sample of a token shard directory (the loader's own reading: sizes and sha256
    checked), repeated to `rows` rows -> (tokens (rows, N) int64, labels (rows,) int64)."""
    from rar.data.loader import TokenShards

    ds = TokenShards(shard_dir, batch_size=1 << 30, crops="all", shuffle=False, verify="sha256")
    tokens, labels = next(ds.iter_unit(worker=0, num_workers=1))
    reps = math.ceil(rows / len(tokens))
    return tokens.repeat(reps, 1)[:rows], labels.repeat(reps)[:rows]


def _usr_signal() -> int:
    """The signal SLURM sends before a time limit, as submitit listens for it (USR2)."""
    import submitit

    try:
        return getattr(signal, "SIG" + submitit.JobEnvironment().USR_SIG)
    except (RuntimeError, AttributeError):
        return signal.SIGUSR2


def _throughput(metrics_csv: Path, world_size: int) -> dict:
    """Steady-state training throughput from a run's metrics.csv (a row per step): the median
    images/s of the steps after the first two (start-up, compilation)."""
    import csv

    with open(metrics_csv) as f:
        rows = list(csv.DictReader(f))
    steady = [float(r["images_per_s"]) for r in rows[2:]] or [
        float(r["images_per_s"]) for r in rows
    ]
    rate = statistics.median(steady)
    return {
        "images_per_s": round(rate, 3),
        "images_per_s_per_gpu": round(rate / world_size, 3),
        "steps_timed": len(steady),
    }


def rehearse_training(spec: dict, workdir: str, *, should_stop: Callable[[], bool]) -> dict:
    """The training job: `spec["config"]` (a TrainConfig dict) on the tokens of
    `spec["data"]` (tiled in memory to two global batches), into `workdir`.

    spec["interrupt"]: "signal": at step `signal_at`, rank 0 sends itself the time-limit
        signal (USR2), so submitit's handler saves `last.pt` and requeues the job, which
        resumes; "inline" (debug backend): stop at that step and resume in this process;
        "none": only the uninterrupted run (throughput of another model size).
    Then the same run uninterrupted, and (rank 0) the comparison and the throughput.
    """
    import torch

    from rar.bench import machine_description
    from rar.config import TrainConfig
    from rar.runtime import DistEnv, resolve_device
    from rar.train import TensorBatchSource, load_checkpoint, train

    cfg = TrainConfig.from_dict(spec["config"], source="preflight training config")
    env = DistEnv.from_environ()
    tokens, labels = read_tokens(spec["data"], cfg.source_images)
    work = Path(workdir)

    def source():
        return TensorBatchSource(tokens, labels, seed=cfg.seed)

    result: dict[str, Any] = {"model": cfg.model, "world_size": env.world_size}
    interrupt = spec["interrupt"]
    if interrupt != "none":
        cut, marker = work / "interrupted", work / "interrupted" / "signal.json"
        seen = 0

        def stopper() -> bool:
            nonlocal seen
            seen += 1
            if should_stop():
                return True
            if marker.exists() or seen < spec["signal_at"]:
                return False
            if interrupt == "inline":
                marker.write_text(json.dumps({"signal_at": seen}))
                return True
            if env.rank != 0:  # the other ranks stop with rank 0 (the loop all-reduces it)
                return False
            marker.write_text(json.dumps({"signal_at": seen}))
            os.kill(os.getpid(), _usr_signal())  # what SLURM sends signal_delay_s before the limit
            deadline = time.monotonic() + 120
            while not should_stop() and time.monotonic() < deadline:
                time.sleep(0.05)  # submitit's handler (main thread) sets the stop flag
            return should_stop()

        last = cut / "checkpoints" / "last.pt"
        resumed = load_checkpoint(last)["step"] if marker.exists() and last.exists() else None
        out = train(cfg, cut, source=source(), device=spec["device"], should_stop=stopper)
        if out.name != "final.pt":
            saved = load_checkpoint(out)["step"] if env.rank == 0 else None
            if env.rank == 0:
                marker.write_text(json.dumps({**json.loads(marker.read_text()), "saved": saved}))
            if interrupt == "signal":
                return {"stopped_at": saved}  # the job is being requeued
            resumed = saved
            out = train(cfg, cut, source=source(), device=spec["device"], should_stop=should_stop)
        if env.rank == 0:
            record = json.loads(marker.read_text()) if marker.exists() else {}
            result.update(
                signal_at=record.get("signal_at"), saved_step=record.get("saved"),
                resumed_step=resumed, final_step=load_checkpoint(out)["step"],
            )  # fmt: skip
    reference = work / "uninterrupted"
    ref = train(cfg, reference, source=source(), device=spec["device"], should_stop=should_stop)
    if env.rank != 0:
        return {}
    dev = resolve_device(spec["device"], env.local_rank)
    ref_ckpt = load_checkpoint(ref)
    result.update(
        reference_step=ref_ckpt["step"],
        total_steps=cfg.total_steps,
        device=dev.type,
        machine=machine_description(dev),
        dtype="bf16" if cfg.precision == "bf16" or (cfg.precision == "auto" and dev.type == "cuda")
        else "fp32",
        compile=cfg.compile,
        micro_batch=cfg.micro_batch or cfg.global_batch // env.world_size,
        global_batch=cfg.global_batch,
        backend="nccl" if dev.type == "cuda" and env.world_size > 1 else
        ("gloo" if env.world_size > 1 else "none"),
        **_throughput(reference / "metrics.csv", env.world_size),
    )  # fmt: skip
    if interrupt != "none":
        a, b = load_checkpoint(cut / "checkpoints" / "final.pt")["model"], ref_ckpt["model"]
        diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in b)
        result.update(max_abs_diff=diff, identical=all(torch.equal(a[k], b[k]) for k in b))
    return result


def rehearse_sampling(
    checkpoint: str,
    tokenizer: str,
    out: str,
    *,
    num_classes: int,
    sampling: dict,
    dtype: str,
    device: str,
    bench_batch: int,
    bench_steps: int,
) -> dict:
    """The sampling job: one image per class with `rar.sample.sample` (KV cache, guidance),
    then (rank 0) the timing of `bench_batch`-image batches, decoding included."""
    import torch

    from rar.bench import machine_description
    from rar.checkpoint import load_generator
    from rar.generate import generate
    from rar.runtime import DistEnv
    from rar.sample import sample
    from rar.tokenizer import load_tokenizer

    info = sample(
        checkpoint, tokenizer, out, num_per_class=1, num_classes=num_classes,
        chunk_size=num_classes, seed=0, device=device, dtype=dtype, progress=False,
        **sampling,
    )  # fmt: skip
    if info is None:  # not rank 0
        return {}
    from rar.runtime import resolve_device

    dev = resolve_device(device, DistEnv.from_environ().local_rank)
    model, _ = load_generator(checkpoint)
    model.to(dev)
    tok = load_tokenizer(tokenizer).to(dev)
    amp = torch.bfloat16 if dtype == "bf16" or (dtype == "auto" and dev.type == "cuda") else None
    labels = torch.arange(bench_batch, device=dev) % num_classes
    gen = torch.Generator(dev).manual_seed(0)
    settings = {k: v for k, v in sampling.items() if k != "order"}
    settings.setdefault("guidance_power", 0.0)

    def batch() -> None:
        ids = generate(
            model, labels, order=sampling.get("order", "row-major"), generator=gen,
            amp_dtype=amp, **settings,
        )  # fmt: skip
        tok.decode(ids)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    batch()  # warm-up: allocator, kernels (gpt-fast's timing rules, as rar.bench)
    sync()
    start = time.perf_counter()
    for _ in range(bench_steps):
        batch()
    sync()
    seconds = (time.perf_counter() - start) / bench_steps
    return {
        "num_samples": info["num_samples"],
        "images_per_s_per_gpu": round(bench_batch / seconds, 3),
        "batch_size": bench_batch,
        "dtype": "bf16" if amp is not None else "fp32",
        "device": dev.type,
        "machine": machine_description(dev),
        "world_size": info.get("world_size"),
    }


# ##########################################################################################
# The rehearsal
# ##########################################################################################


@dataclass(frozen=True)
class Scale:
    """How small the rehearsal is."""

    classes: int = 4  # image classes of the handful
    images_per_class: int = 4
    train_steps: int = 6  # optimizer steps per run (the interrupted one stops at a third)
    sample_batch: int = 0  # images per timed sampling batch; 0 = the study's chunk_size
    tokenizer_steps: int = 20  # a demo study's toy tokenizer


def _prepare_out(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in OWN_ENTRIES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _link_images(config: dict, dest: Path, scale: Scale) -> int:
    """A handful of ImageNet images: the first `classes` class folders, the first images of
    each, as symbolic links."""
    src = Path(config["data"]["images"]).resolve()
    classes = sorted(p for p in src.iterdir() if p.is_dir())[: scale.classes]
    n = 0
    for folder in classes:
        files = sorted(
            f for f in folder.iterdir() if f.suffix.lower() in (".jpeg", ".jpg", ".png")
        )[: scale.images_per_class]
        (dest / folder.name).mkdir(parents=True, exist_ok=True)
        for f in files:
            (dest / folder.name / f.name).symlink_to(f)
            n += 1
    return n


def _toy_train_config(study, model: str | None, global_steps: int):
    """The rehearsal's TrainConfig for `model` (default: the study's `train.model`): the
    resolved config of a run of that size (its architecture, batch, micro-batch, precision,
    compile), on two global batches of tiled tokens, annealing over the few steps."""
    runs = list(study.runs.values())
    wanted = model or study.config["train"].get("model") or runs[0].config.model
    base = next((r.config for r in runs if r.config.model == wanted), None)
    if base is None:  # a size the study does not train: the first run's recipe, resized
        base = replace(runs[0].config, model=wanted)
    epochs = global_steps / 2  # two global batches per epoch
    # Watching a run (loggers, held-out NLL, sample grids) is not rehearsed: it needs held-out
    # shards and accounts the toy run does not have.
    quiet = {"tensorboard": False, "wandb": "off", "val_every": 0.0, "sample_every": 0.0}
    names = {f.name for f in fields(base)}
    return replace(
        base, data="", source_images=2 * base.global_batch, epochs=epochs,
        warmup_epochs=min(base.warmup_epochs, epochs / 2), anneal_start=0.0, anneal_end=epochs,
        checkpoint_epochs=(), checkpoint_minutes=1e6, log_every=1,
        **{k: v for k, v in quiet.items() if k in names},
    )  # fmt: skip


def _first_sampling(study) -> dict:
    """The sampling settings of the study's first evaluation, as `rar.sample.sample` takes
    them (a sweep's first scale standing in for the scale it will choose)."""
    ev = next(iter(study.evaluations.values()))
    s = dict(ev.sampling)
    if "guidance_scales" in s:
        s["guidance_scale"] = s.pop("guidance_scales")[0]
    return {k: s[k] for k in ("guidance_scale", "guidance_power", "guidance_schedule",
                              "temperature", "order") if k in s}  # fmt: skip


def _sizes(study) -> list[str]:
    return list(dict.fromkeys(r.config.model for r in study.runs.values()))


class _Stages:
    """Runs the stages in order, each a Check; a stage whose prerequisite failed is skipped."""

    def __init__(self) -> None:
        self.checks: list[Check] = []
        self.failed: set[str] = set()

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        if check.ok is not True:
            self.failed.add(check.name)
        return check

    def run(self, name: str, needs: list[str], fn: Callable[[], Check | tuple]) -> Any:
        """Run `fn` unless a check it needs did not pass; fn returns a Check, or (Check,
        value). Exceptions become a FAIL naming the job log, when the job left one."""
        blocked = [n for n in needs if n in self.failed]
        if blocked:
            self.add(Check(name, None, f"not run: {', '.join(blocked)} did not pass"))
            return None
        try:
            out = fn()
        except Exception as err:  # a stage's failure is this stage's FAIL line
            from rar.records import failure_reason

            log = getattr(err, "log", None)
            fix = f"read the job's log {log}" if log else "rerun with --debug for the traceback"
            self.add(Check(name, False, failure_reason(err), fix))
            if os.environ.get("RAR_DEBUG", "") not in ("", "0"):
                raise
            return None
        check, value = out if isinstance(out, tuple) else (out, None)
        self.add(check)
        return value


def run_preflight(
    study,
    *,
    config_file: str,
    out: str | os.PathLike,
    backend: str,
    launcher_dir: str = "",
    scale: Scale = Scale(),
    model: str | None = None,
    device: str = "auto",
    time_cap_min: int = 20,
    checks_only: bool = False,
) -> list[Check]:
    """Check a study's resources and launcher settings, then rehearse every stage at `scale`
    (unless `checks_only`); write `<out>/report.md`, `checks.json` and, when training and
    sampling were measured, `throughput.json`. Returns the checks."""
    from rar.launch import TrainJob, launch

    out = Path(out).resolve()
    _prepare_out(out)
    config = study.config
    s = _Stages()
    started = time.monotonic()

    # -- 1. resources, before anything is submitted ---------------------------------------
    needed = {n.key: n for n in study_resources(config)}
    for n in needed.values():
        s.add(check_file(n, config_file=config_file))
    images_check = check_images(config)
    if images_check is not None:
        s.add(images_check)
    weights_check = ["file evaluation.weights"] if "evaluation.weights" in needed else []
    s.run(
        f"extractor {config['evaluation']['extractor']}",
        weights_check,
        lambda: check_extractor(config),
    )
    launchers, sources, grid_limits, bad = stage_launchers(
        backend, launcher_dir, folder=out / "submitit", time_cap_min=time_cap_min
    )
    for check in bad:
        s.add(check)
    for stage, cfg in launchers.items():
        s.add(check_launcher(stage, cfg, sources[stage], grid_time_min=grid_limits[stage]))

    throughput: dict[str, Any] = {"train": {}, "sample": {}}
    if not checks_only:
        _rehearse(study, s, out, launchers, launch, TrainJob, needed, scale, model, device,
                  config_file, throughput)  # fmt: skip

    # -- measured throughput, for `rar plan` ------------------------------------------------
    if throughput["train"]:
        write_throughput(out / "throughput.json", throughput, launchers)
        figures = [
            f"{kind} {model} {rec['images_per_s_per_gpu']:,.2f}"
            for kind in ("train", "sample")
            for model, rec in throughput[kind].items()
        ]
        cuda = any(rec.get("device") == "cuda" for rec in throughput["train"].values())
        s.add(
            Check(
                "throughput",
                True,
                f"images/s per {'GPU' if cuda else 'process'}: {', '.join(figures)} -> "
                f"{out / 'throughput.json'} (read by `rar plan`)",
            )
        )
    elif not checks_only:
        s.add(Check("throughput", None, "not measured: the training stage did not run"))

    # -- report ------------------------------------------------------------------------------
    context = [
        f"config {config_file}, launcher {backend}"
        + (f" ({launcher_dir}/<stage>.yaml)" if launcher_dir else ""),
        f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')}, "
        f"{time.monotonic() - started:.0f} s",
    ]
    title = f"rar preflight: study {study.name}"
    from rar.io import atomic_write_json, atomic_write_text

    atomic_write_text(out / "report.md", format_report(s.checks, title=title, context=context))
    atomic_write_json(out / "checks.json", [{**asdict(c), "status": c.status} for c in s.checks])
    return s.checks


def _rehearse(study, s, out, launchers, launch, TrainJob, needed, scale, model, device,
              config_file, throughput) -> None:  # fmt: skip
    """Section 2 and 3 of the module docstring, into the check list `s`."""
    config = study.config
    tok_cfg = config["tokenizer"]
    demo = config["data"].get("demo")
    images = out / "images"

    # -- images and tokenizer -------------------------------------------------------------
    def make_images():
        if demo:
            from rar.demo_data import make_demo_dataset

            make_demo_dataset(
                images, num_classes=min(scale.classes, demo["num_classes"]),
                images_per_class=scale.images_per_class, val_per_class=scale.images_per_class,
                image_size=demo["image_size"], seed=demo["seed"],
            )  # fmt: skip
            n = sum(1 for _ in (images / "train").rglob("*.png"))
            return Check("stage images", True, f"{n} demo images in {images / 'train'}")
        n = _link_images(config, images / "train", scale)
        return Check("stage images", True, f"{n} images of ImageNet linked in {images / 'train'}")

    image_needs = [] if demo else ["images data.images"]
    s.run("stage images", image_needs, make_images)

    if "train" in tok_cfg:

        def make_tokenizer():
            from rar.vq_demo import VQDemoConfig, train_tokenizer_from_folder

            train = tok_cfg["train"]
            mult = {4: (1, 2, 4), 8: (1, 2, 4, 4)}[train["downsample"]]
            path = out / "tokenizer" / f"{tok_cfg['name']}.pt"
            cfg = VQDemoConfig(
                image_size=demo["image_size"] if demo else tok_cfg["grid"] * train["downsample"],
                codebook_size=tok_cfg["codebook_size"], channel_mult=mult,
            )  # fmt: skip
            train_tokenizer_from_folder(
                images / "train", path, config=cfg, steps=scale.tokenizer_steps,
                batch_size=min(16, train["batch_size"]), seed=train["seed"],
            )  # fmt: skip
            return Check(
                "stage tokenizer", True, f"toy {tok_cfg['name']} ({scale.tokenizer_steps} "
                f"steps) trained in this process: {path}",
            ), path  # fmt: skip

        tokenizer = s.run("stage tokenizer", ["stage images"], make_tokenizer)
        tokenizer_need = "stage tokenizer"
    else:
        tokenizer = Path(tok_cfg["weights"]).resolve()
        tokenizer_need = "file tokenizer.weights"

    # -- tokenize -------------------------------------------------------------------------
    crop = next(iter(study.datasets.values())).crop
    data = out / "data"

    def tokenize():
        from rar.data.tokenize import tokenize_images

        n = sum(1 for _ in (images / "train").rglob("*") if _.is_file())
        summary = launch(
            tokenize_images, str(images / "train"), str(data), launcher=launchers["tokenize"],
            record=out / "tokenize" / "job.json", name="preflight_tokenize",
            tokenizer=str(tokenizer), crop=crop, images_per_part=max(1, math.ceil(n / 2)),
            num_workers=0, progress=False, batch_size=8,
        )  # fmt: skip
        manifest = json.loads(Path(summary["manifest"]).read_text())
        return Check(
            "stage tokenize", True, f"{manifest['num_source_images']} images -> "
            f"{manifest['num_samples']} token sequences ({crop}) in {len(manifest['shards'])} "
            f"shards, {manifest['tokens_per_sample']} tokens each; job {_job(out / 'tokenize')}",
        )  # fmt: skip

    s.run("stage tokenize", ["stage images", tokenizer_need, "launcher tokenize"], tokenize)

    # -- train: the study's layout, a requeue, the uninterrupted twin ------------------------
    train_launcher = launchers.get("train")
    cfg = _toy_train_config(study, model, scale.train_steps)
    interrupt = (
        "inline" if train_launcher is None or train_launcher.backend == "debug" else "signal"
    )
    spec = {
        "config": cfg.to_dict(), "data": str(data), "interrupt": interrupt,
        "signal_at": max(1, scale.train_steps // 3), "device": device,
    }  # fmt: skip

    def train():
        r = launch(
            TrainJob(rehearse_training), spec, str(out / "train" / cfg.model),
            launcher=train_launcher, record=out / "train" / "job.json", name="preflight_train",
        )  # fmt: skip
        layout = (
            f"{r['world_size']} process(es) on {r['device']} ({r['machine']}), DDP "
            f"{r['backend']}, {r['dtype']}, compile {r['compile']}, micro-batch "
            f"{r['micro_batch']}, {r['images_per_s_per_gpu']:,.2f} images/s per process; "
            f"job {_job(out / 'train')}"
        )
        throughput["train"][cfg.model] = _train_record(r)
        return Check("stage train", True, f"{cfg.model}: {r['reference_step']} steps, {layout}"), r

    result = s.run("stage train", ["stage tokenize", "launcher train"], train)
    if result is not None:
        s.add(check_resume(result, interrupt))

    # other model sizes of the study: their throughput (the plan's GPU-hours)
    for size in _sizes(study):
        if size == cfg.model or model:
            continue
        size_cfg = _toy_train_config(study, size, scale.train_steps)
        size_spec = {**spec, "config": size_cfg.to_dict(), "interrupt": "none"}

        def measure(size=size, size_spec=size_spec):
            r = launch(
                TrainJob(rehearse_training), size_spec, str(out / "train" / size),
                launcher=train_launcher, record=out / "train" / size / "job.json",
                name=f"preflight_train_{size}",
            )  # fmt: skip
            throughput["train"][size] = _train_record(r)
            return Check(
                f"throughput train {size}", True, f"{r['images_per_s_per_gpu']:,.2f} images/s "
                f"per GPU ({r['world_size']} x {r['device']}, {r['dtype']}, micro-batch "
                f"{r['micro_batch']})",
            )  # fmt: skip

        s.run(f"throughput train {size}", ["stage tokenize", "launcher train"], measure)

    # -- sample ----------------------------------------------------------------------------
    final = out / "train" / cfg.model / "uninterrupted" / "checkpoints" / "final.pt"
    samples = out / "sample" / "samples.npz"
    sampling = _first_sampling(study)
    num_classes = min(scale.classes, config["data"]["num_classes"])
    bench_batch = scale.sample_batch or config["sampling"]["chunk_size"]

    def sample():
        r = launch(
            rehearse_sampling, str(final), str(tokenizer), str(samples),
            launcher=launchers["sample"], record=out / "sample" / "job.json",
            name="preflight_sample", num_classes=num_classes, sampling=sampling,
            dtype="fp32", device=device, bench_batch=bench_batch, bench_steps=2,
        )  # fmt: skip
        throughput["sample"][cfg.model] = {
            k: r[k] for k in ("images_per_s_per_gpu", "batch_size", "dtype", "device", "machine")
        }
        return Check(
            "stage sample", True, f"{r['num_samples']} images (KV cache, guidance "
            f"{sampling.get('guidance_scale')}) from {cfg.model}; {r['images_per_s_per_gpu']:,.2f}"
            f" images/s per {'GPU' if r['device'] == 'cuda' else 'process'} at batch "
            f"{bench_batch} ({r['dtype']}, decoding included); job "
            f"{_job(out / 'sample')}",
        )  # fmt: skip

    s.run("stage sample", ["stage train", tokenizer_need, "launcher sample"], sample)

    # -- evaluate and the table -------------------------------------------------------------
    ev = config["evaluation"]
    reference = ev["reference"] or str(images / "val")
    metrics = out / "evaluate" / "metrics.json"
    # ADM's batch: the workflow's feature cache, so its 10,000 reference images are featurized
    # once for the preflight and the grid; the toy's own held-out images: a cache of its own.
    cache = Path(study.prefix, "cache", "features") if ev["reference"] else out / "cache"
    eval_needs = ["stage sample", "launcher evaluate", f"extractor {ev['extractor']}"]
    eval_needs += [k for k in ("evaluation.reference", "evaluation.weights") if k in needed]
    eval_needs = [n if n.startswith(("stage", "launcher", "extractor")) else f"file {n}"
                  for n in eval_needs]  # fmt: skip

    def evaluate():
        from rar.evaluate import evaluate as score

        r = launch(
            score, str(samples), str(Path(reference).resolve()),
            launcher=launchers["evaluate"], record=out / "evaluate" / "job.json",
            name="preflight_evaluate", extractor=ev["extractor"],
            weights=str(Path(ev["weights"]).resolve()) if ev.get("weights") else None,
            cache_dir=str(cache.resolve()),
            out=str(metrics), device=device,
        )  # fmt: skip
        names = ("fid", "isc", "precision", "recall")
        values = ", ".join(
            f"{k} {v:.3g}"
            for k, v in r.items()
            if k.startswith(names) and isinstance(v, (int, float)) and not isinstance(v, bool)
        )
        return Check(
            "stage evaluate", True, f"{r['num_samples']} samples scored with {ev['extractor']} "
            f"against {reference} ({r['num_reference_images'] or 'mu/sigma'} reference images): "
            f"{values}; job {_job(out / 'evaluate')}",
        )  # fmt: skip

    s.run("stage evaluate", eval_needs, evaluate)

    def table():
        from rar.report import make_table

        row = {
            "label": f"preflight {cfg.model}", "keys": {}, "run": cfg.run_id(),
            "evaluation": "preflight", "paper": {}, "failure": None, "sweep": None,
        }  # fmt: skip
        df = make_table(
            table="preflight", rows=[row], metrics=[metrics], csv=out / "table.csv",
            md=out / "table.md",
        )  # fmt: skip
        status = df["status"].iloc[0]
        ok = str(status).startswith("ok")
        return Check("stage table", ok, f"{out / 'table.csv'}: row status {status!r}",
                     "" if ok else "see rar.report.make_table")  # fmt: skip

    s.run("stage table", ["stage evaluate"], table)


def check_resume(r: dict, interrupt: str) -> Check:
    """The requeue check: the run stopped by the signal saved `last.pt`, the requeued job
    resumed at that very step, and ended at the step (CPU: with the weights) of the
    uninterrupted run."""
    name = "requeue and resume"
    how = {"signal": "time-limit signal (USR2) and requeue", "inline": "stop and resume "
           "in-process (debug launcher: no scheduler to requeue)"}[interrupt]  # fmt: skip
    steps = (
        f"{how}: stopped at step {r.get('saved_step')}, resumed at {r.get('resumed_step')}, "
        f"ended at {r.get('final_step')}; uninterrupted {r.get('reference_step')} of "
        f"{r.get('total_steps')}"
    )
    exact = r.get("device") == "cpu"
    same = f"weights {'identical' if r.get('identical') else 'differ'} (max |dw| " \
        f"{r.get('max_abs_diff', float('nan')):.3g})"  # fmt: skip
    problems = []
    if r.get("saved_step") is None or r.get("resumed_step") != r.get("saved_step"):
        problems.append("the resumed step is not the saved one")
    if not (r.get("final_step") == r.get("reference_step") == r.get("total_steps")):
        problems.append("the runs end at different steps")
    if exact and not r.get("identical"):
        problems.append("on the CPU the resumed run must equal the uninterrupted one bit for bit")
    if problems:
        return Check(
            name, False, f"{steps}; {same}: {'; '.join(problems)}",
            "exact resume is broken (rar/train.py, checkpoints/last.pt): report it with the "
            "job logs",
        )  # fmt: skip
    note = "" if exact else " (GPU kernels are not bit-reproducible: compared to fp tolerance)"
    return Check(name, True, f"{steps}; {same}{note}")


def _train_record(r: dict) -> dict:
    keys = ("images_per_s_per_gpu", "images_per_s", "world_size", "micro_batch",
            "global_batch", "dtype", "compile", "device", "machine")  # fmt: skip
    return {k: r[k] for k in keys if k in r}


def _job(folder: Path) -> str:
    """The job id and backend recorded in `<folder>/job.json`."""
    with contextlib.suppress(OSError, ValueError):
        rec = json.loads((folder / "job.json").read_text())
        requeued = f", requeued {rec.get('requeues', 0)}x" if rec["backend"] == "slurm" else ""
        return f"{rec['job_id']} ({rec['backend']}{requeued})"
    return "?"


def write_throughput(path: Path, throughput: dict, launchers: dict) -> None:
    """`throughput.json`, where `rar plan` finds the measured figures."""
    from rar.io import atomic_write_json

    train = launchers.get("train")
    layout = {}
    if train is not None:
        layout = {"nodes": train.nodes, "tasks_per_node": train.tasks,
                  "gpus_per_node": train.gpus_per_node, "backend": train.backend}  # fmt: skip
    atomic_write_json(
        path,
        {
            "format": THROUGHPUT_FORMAT,
            "measured": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "layout": layout,
            "train": throughput["train"],
            "sample": throughput["sample"],
        },
    )
