"""The preflight's checks: the record of one check and the report, every file the config names
(before anything is submitted), each stage's launcher settings against the cluster, and the
requeue check of the training rehearsal. What runs no job lives here; the jobs are in
`rar.ops.preflight.jobs`, the stages that launch them in `rar.ops.preflight.stages`."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rar.experiments.resources import (
    Needed,
    adm_reference_problems,
    count_images,
    npz_arrays,
)

STAGES = ("tokenize", "train", "sample", "evaluate")


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
            from rar.model.transformer import RAR, rar_config

            module = RAR(rar_config(model))  # the release: adaLN, 1000 classes, 1024 codes
        elif resource_kind == "llamagen_vq":
            from rar.model.llamagen_vq import LlamaGenVQConfig, LlamaGenVQModel

            module = LlamaGenVQModel(LlamaGenVQConfig())  # VQ-16: 16384 x 8 codes
        else:
            from rar.model.tokenizer import MaskGITVQGAN, MaskGITVQGANConfig

            module = MaskGITVQGAN(MaskGITVQGANConfig())
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _state_dict_of(path: Path, r) -> dict:
    """The state dict of a released weights file: the file itself, or the `model` entry of
    LlamaGen's `{"model": ..., "args": ...}` (read by the tokenizer's loader, which admits
    its pickled options)."""
    if r.kind == "llamagen_vq":
        from rar.model.tokenizer import read_state_dict

        return read_state_dict(path)
    from rar.model.checkpoint import load_file

    return load_file(path, what=r.what)


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
    if r.kind in ("rar", "maskgit_vqgan", "llamagen_vq"):
        try:
            sd = _state_dict_of(path, r)
        except ValueError as err:  # CheckpointError is one
            return Check(name, False, str(err), refetch)
        problems = _compare_state_dict(sd, expected_shapes(r.kind, r.model))
        if problems:
            return Check(name, False, f"{path} ({size}): {'; '.join(problems)}", refetch)
        return Check(name, True, f"{path} ({size}): {len(sd)} keys, the official layout")
    if r.kind == "inception":
        from rar.files import sha256_file

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
    problems = adm_reference_problems(arrays, r.image_size)
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
    from rar.evaluation.extractors import ExtractorUnavailable, check_extractor_available

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
        ["sinfo", "-h", "-o", "%P|%D|%G|%l"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
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
                    name,
                    False,
                    f"gpus_per_node {launcher.gpus_per_node}, {have} GPUs here",
                    f"{edit}: key gpus_per_node (at most {have})",
                )
        return Check(name, True, f"local: {launcher.tasks} process(es), {source}")
    missing = [t for t in ("sbatch", "srun", "sacct", "sinfo") if shutil.which(t) is None]
    if missing:
        return Check(
            name,
            False,
            f"no {', '.join(missing)} on the PATH",
            "run on the cluster's login node, or use the local profile (--launcher local)",
        )
    try:
        parts = slurm_partitions()
    except (OSError, subprocess.SubprocessError) as err:
        return Check(name, False, f"sinfo failed: {err}", "check that SLURM answers (sinfo)")
    partition = launcher.partition or next((p for p, v in parts.items() if v["default"]), None)
    if partition not in parts:
        known = ", ".join(f"{p}{'*' if v['default'] else ''}" for p, v in parts.items())
        return Check(
            name,
            False,
            f"partition {launcher.partition!r} does not exist (this cluster has: {known})",
            f"{edit}: key partition (one of {', '.join(parts)})",
        )
    p = parts[partition]
    problems = []
    if launcher.gpus_per_node > p["gpus"]:
        problems.append(
            (
                f"gpus_per_node {launcher.gpus_per_node} but nodes of {partition} have {p['gpus']}",
                f"key gpus_per_node (at most {p['gpus']}) or partition",
            )
        )
    if launcher.nodes > p["nodes"]:
        problems.append(
            (
                f"nodes {launcher.nodes} but {partition} has {p['nodes']}",
                f"key nodes (at most {p['nodes']})",
            )
        )
    if p["time_min"] is not None and grid_time_min > p["time_min"]:
        problems.append(
            (
                f"time_min {grid_time_min} but {partition} allows {p['time_min']:g}",
                f"key time_min (at most {p['time_min']:g}; jobs requeue at their limit)",
            )
        )
    measured = (
        f"partition {partition} ({p['nodes']} nodes, {p['gpus']} GPUs each); asks "
        f"{launcher.nodes} x {launcher.tasks} task(s), {launcher.gpus_per_node} GPU(s)/node"
    )
    if problems:
        return Check(
            name,
            False,
            f"{measured}: {'; '.join(m for m, _ in problems)}",
            f"{edit}: {'; '.join(f for _, f in problems)}",
        )
    return Check(name, True, f"{measured}, from {source}")


def stage_launchers(
    backend: str, launcher_dir: str, *, folder: Path, time_cap_min: int
) -> tuple[dict[str, Any], dict[str, str], dict[str, int], list[Check]]:
    """Per stage: the launcher settings the grid uses (`<launcher_dir>/<stage>.yaml`, the
    backend from the profile, as `rar.experiments.rules.RuleWiring.launcher_args`), adapted for a
    rehearsal: the time limit capped at `time_cap_min`, at least two requeues for training,
    quick polling. Returns (settings, their source, the grid's own time limits, failed
    checks of files that do not load)."""
    from rar.ops.launch import LauncherConfig

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


def check_resume(r: dict, interrupt: str) -> Check:
    """The requeue check: the run stopped by the signal saved `last.pt`, the requeued job
    resumed at that very step, and ended at the step (CPU: with the weights) of the
    uninterrupted run."""
    name = "requeue and resume"
    how = {
        "signal": "time-limit signal (USR2) and requeue",
        "inline": "stop and resume in-process (debug launcher: no scheduler to requeue)",
    }[interrupt]
    steps = (
        f"{how}: stopped at step {r.get('saved_step')}, resumed at {r.get('resumed_step')}, "
        f"ended at {r.get('final_step')}; uninterrupted {r.get('reference_step')} of "
        f"{r.get('total_steps')}"
    )
    exact = r.get("device") == "cpu"
    same = (
        f"weights {'identical' if r.get('identical') else 'differ'} (max |dw| "
        f"{r.get('max_abs_diff', float('nan')):.3g})"
    )
    problems = []
    if r.get("saved_step") is None or r.get("resumed_step") != r.get("saved_step"):
        problems.append("the resumed step is not the saved one")
    if not (r.get("final_step") == r.get("reference_step") == r.get("total_steps")):
        problems.append("the runs end at different steps")
    if exact and not r.get("identical"):
        problems.append("on the CPU the resumed run must equal the uninterrupted one bit for bit")
    if problems:
        return Check(
            name,
            False,
            f"{steps}; {same}: {'; '.join(problems)}",
            "exact resume is broken (rar/training/loop.py, checkpoints/last.pt): report it with "
            "the "
            "job logs",
        )
    note = "" if exact else " (GPU kernels are not bit-reproducible: compared to fp tolerance)"
    return Check(name, True, f"{steps}; {same}{note}")
