"""`rar preflight`'s one entry point: the checks before anything is submitted, the rehearsal,
the measured throughput and the report (`<out>/report.md`, `checks.json`, `throughput.json`)."""

from __future__ import annotations

import datetime
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rar.experiments.resources import study_resources
from rar.ops.preflight.checks import (
    Check,
    check_extractor,
    check_file,
    check_images,
    check_launcher,
    format_report,
    stage_launchers,
)
from rar.ops.preflight.memory import check_sampling_memory
from rar.ops.preflight.stages import Rehearsal, Scale, _Stages

THROUGHPUT_FORMAT = "rar-throughput/1"
# Folders and files of <out> that a preflight writes (and removes before it starts again).
OWN_ENTRIES = (
    "images",
    "tokenizer",
    "tokenize",
    "data",
    "train",
    "sample",
    "evaluate",
    "submitit",
    "cache",
    "report.md",
    "checks.json",
    "throughput.json",
    "table.csv",
    "table.md",
)
DEFAULT_SCALE = Scale()


def run_preflight(
    study,
    *,
    config_file: str,
    out: str | os.PathLike,
    backend: str,
    launcher_dir: str = "",
    scale: Scale = DEFAULT_SCALE,
    model: str | None = None,
    device: str = "auto",
    time_cap_min: int = 20,
    checks_only: bool = False,
) -> list[Check]:
    """Check a study's resources and launcher settings, then rehearse every stage at `scale`
    (unless `checks_only`); write `<out>/report.md`, `checks.json` and, when training and
    sampling were measured, `throughput.json`. Returns the checks."""
    out = Path(out).resolve()
    _prepare_out(out)
    s = _Stages()
    started = time.monotonic()
    needed = _check_resources(s, study.config, config_file)
    launchers = _check_launchers(s, backend, launcher_dir, out, time_cap_min)
    throughput: dict[str, Any] = {"train": {}, "sample": {}}
    sample_gpu = None
    if not checks_only:
        rehearsal = Rehearsal(
            study,
            s,
            out,
            launchers,
            needed,
            scale=scale,
            model=model,
            device=device,
            throughput=throughput,
        )
        rehearsal.run()
        sample_gpu = rehearsal.sample_gpu  # the sample job's GPU, for the memory check
    for check in check_sampling_memory(
        study, device=device, config_file=config_file, gpu=sample_gpu
    ):
        s.add(check)
    _check_throughput(s, out, throughput, launchers, checks_only)
    context = [
        f"config {config_file}, launcher {backend}"
        + (f" ({launcher_dir}/<stage>.yaml)" if launcher_dir else ""),
        f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')}, "
        f"{time.monotonic() - started:.0f} s",
    ]
    title = f"rar preflight: study {study.name}"
    from rar.files import atomic_write_json, atomic_write_text

    atomic_write_text(out / "report.md", format_report(s.checks, title=title, context=context))
    atomic_write_json(out / "checks.json", [{**asdict(c), "status": c.status} for c in s.checks])
    return s.checks


def _prepare_out(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in OWN_ENTRIES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _check_resources(s: _Stages, config: dict, config_file: str) -> dict:
    """Section 1: every file the config names, the images, the extractor. Returns the files
    the config needs by key."""
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
    return needed


def _check_launchers(
    s: _Stages, backend: str, launcher_dir: str, out: Path, time_cap_min: int
) -> dict:
    """Section 1: each stage's launcher settings load and fit the cluster. Returns them."""
    launchers, sources, grid_limits, bad = stage_launchers(
        backend, launcher_dir, folder=out / "submitit", time_cap_min=time_cap_min
    )
    for check in bad:
        s.add(check)
    for stage, cfg in launchers.items():
        s.add(check_launcher(stage, cfg, sources[stage], grid_time_min=grid_limits[stage]))
    return launchers


def _check_throughput(
    s: _Stages, out: Path, throughput: dict, launchers: dict, checks_only: bool
) -> None:
    """Section 3: the measured throughput, written for `rar plan`."""
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


def write_throughput(path: Path, throughput: dict, launchers: dict) -> None:
    """`throughput.json`, where `rar plan` finds the measured figures."""
    from rar.files import atomic_write_json

    train = launchers.get("train")
    layout = {}
    if train is not None:
        layout = {
            "nodes": train.nodes,
            "tasks_per_node": train.tasks,
            "gpus_per_node": train.gpus_per_node,
            "backend": train.backend,
        }
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
