"""The preflight's stages (sections 2 and 3 of `rar.ops.preflight`): a handful of images, the
study's tokenizer, tokenizing, training with a forced requeue, the throughput of every model
size, sampling, scoring and a table, each one job through the grid's launcher settings.

`Rehearsal` holds what the stages share (the out folder, the launchers, the toy training
config, the tokenizer each later stage reads) and has one method per stage, so that each
stage reads on one screen and `run` lists the order and what each one needs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from rar.experiments.records import JOB_RECORD, load_record
from rar.experiments.results import METRICS_JSON
from rar.ops.preflight.checks import Check, check_resume
from rar.ops.preflight.jobs import rehearse_sampling, rehearse_training


@dataclass(frozen=True)
class Scale:
    """How small the rehearsal is."""

    classes: int = 4  # image classes of the handful
    images_per_class: int = 4
    train_steps: int = 6  # optimizer steps per run (the interrupted one stops at a third)
    sample_batch: int = 0  # images per timed sampling batch; 0 = the study's chunk_size
    tokenizer_steps: int = 20  # a demo study's toy tokenizer


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
        base,
        data="",
        source_images=2 * base.global_batch,
        epochs=epochs,
        warmup_epochs=min(base.warmup_epochs, epochs / 2),
        anneal_start=0.0,
        anneal_end=epochs,
        checkpoint_epochs=(),
        checkpoint_minutes=1e6,
        log_every=1,
        **{k: v for k, v in quiet.items() if k in names},
    )


def _first_sampling(study) -> dict:
    """The sampling settings of the study's first evaluation, as `rar.sampling.sampler.sample` takes
    them (a sweep's first scale standing in for the scale it will choose)."""
    ev = next(iter(study.evaluations.values()))
    s = dict(ev.sampling)
    if "guidance_scales" in s:
        s["guidance_scale"] = s.pop("guidance_scales")[0]
    from rar.settings.stages import SAMPLING_FIELDS

    return {k: s[k] for k in SAMPLING_FIELDS if k in s}


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
            from rar.experiments.records import failure_reason

            log = getattr(err, "log", None)
            fix = f"read the job's log {log}" if log else "rerun with --debug for the traceback"
            self.add(Check(name, False, failure_reason(err), fix))
            if os.environ.get("RAR_DEBUG", "") not in ("", "0"):
                raise
            return None
        check, value = out if isinstance(out, tuple) else (out, None)
        self.add(check)
        return value


class Rehearsal:
    """The stages of one preflight, into the check list `stages`; measured figures go into
    `throughput` ({"train": {model: record}, "sample": {model: record}})."""

    def __init__(
        self,
        study,
        stages: _Stages,
        out: Path,
        launchers: dict,
        needed: dict,
        *,
        scale: Scale,
        model: str | None,
        device: str,
        throughput: dict,
    ) -> None:
        from rar.ops.launch import TrainJob, launch

        self.launch, self.TrainJob = launch, TrainJob
        self.study, self.s, self.out, self.launchers = study, stages, out, launchers
        self.needed, self.scale, self.model, self.device = needed, scale, model, device
        self.throughput = throughput
        self.config = study.config
        self.tok_cfg = self.config["tokenizer"]
        self.demo = self.config["data"].get("demo")
        self.images, self.data = out / "images", out / "data"
        # training: the study's layout, a requeue, the uninterrupted twin
        self.train_launcher = launchers.get("train")
        self.cfg = _toy_train_config(study, model, scale.train_steps)
        debug = self.train_launcher is None or self.train_launcher.backend == "debug"
        self.interrupt = "inline" if debug else "signal"
        self.spec = {
            "config": self.cfg.to_dict(),
            "data": str(self.data),
            "interrupt": self.interrupt,
            "signal_at": max(1, scale.train_steps // 3),
            "device": device,
        }
        self.tokenizer: Path | None = None
        self.tokenizer_need = ""
        self.sample_gpu: tuple[int, str] | None = None  # (memory, name) of the sample job's GPU

    def run(self) -> None:
        s = self.s
        s.run("stage images", [] if self.demo else ["images data.images"], self.make_images)
        if "train" in self.tok_cfg:
            self.tokenizer = s.run("stage tokenizer", ["stage images"], self.make_tokenizer)
            self.tokenizer_need = "stage tokenizer"
        else:
            self.tokenizer = Path(self.tok_cfg["weights"]).resolve()
            self.tokenizer_need = "file tokenizer.weights"
        needs = ["stage images", self.tokenizer_need, "launcher tokenize"]
        s.run("stage tokenize", needs, self.tokenize)
        result = s.run("stage train", ["stage tokenize", "launcher train"], self.train)
        if result is not None:
            s.add(check_resume(result, self.interrupt))
        # other model sizes of the study: their throughput (the plan's GPU-hours)
        for size in _sizes(self.study):
            if size == self.cfg.model or self.model:
                continue
            name, needs = f"throughput train {size}", ["stage tokenize", "launcher train"]
            s.run(name, needs, lambda size=size: self.measure(size))
        s.run("stage sample", ["stage train", self.tokenizer_need, "launcher sample"], self.sample)
        s.run("stage evaluate", self._evaluate_needs(), self.evaluate)
        s.run("stage table", ["stage evaluate"], self.table)

    # -- images and tokenizer -----------------------------------------------------------------

    def make_images(self) -> Check:
        images, scale, demo = self.images, self.scale, self.demo
        if demo:
            from rar.demo.data import make_demo_dataset

            make_demo_dataset(
                images,
                num_classes=min(scale.classes, demo["num_classes"]),
                images_per_class=scale.images_per_class,
                val_per_class=scale.images_per_class,
                image_size=demo["image_size"],
                seed=demo["seed"],
            )
            n = sum(1 for _ in (images / "train").rglob("*.png"))
            return Check("stage images", True, f"{n} demo images in {images / 'train'}")
        n = _link_images(self.config, images / "train", scale)
        return Check("stage images", True, f"{n} images of ImageNet linked in {images / 'train'}")

    def make_tokenizer(self) -> tuple[Check, Path]:
        from rar.demo.vq import VQDemoConfig, train_tokenizer_from_folder
        from rar.settings.stages import TokenizerTraining

        tok_cfg, demo, steps = self.tok_cfg, self.demo, self.scale.tokenizer_steps
        train = tok_cfg["train"]
        path = self.out / "tokenizer" / f"{tok_cfg['name']}.pt"
        cfg = VQDemoConfig.with_downsample(
            train["downsample"],
            codebook_size=tok_cfg["codebook_size"],
            image_size=demo["image_size"] if demo else tok_cfg["grid"] * train["downsample"],
        )
        training = TokenizerTraining(
            steps=steps, batch_size=min(16, train["batch_size"]), seed=train["seed"]
        )
        train_tokenizer_from_folder(self.images / "train", path, config=cfg, training=training)
        return Check(
            "stage tokenizer",
            True,
            f"toy {tok_cfg['name']} ({steps} steps) trained in this process: {path}",
        ), path

    def tokenize(self) -> Check:
        from rar.data.tokenize import tokenize_images

        out, images = self.out, self.images
        crop = next(iter(self.study.datasets.values())).crop
        n = sum(1 for _ in (images / "train").rglob("*") if _.is_file())
        summary = self.launch(
            tokenize_images,
            str(images / "train"),
            str(self.data),
            launcher=self.launchers["tokenize"],
            record=out / "tokenize" / JOB_RECORD,
            name="preflight_tokenize",
            tokenizer=str(self.tokenizer),
            grid=self.study.config["tokenizer"]["grid"],
            crop=crop,
            images_per_part=max(1, math.ceil(n / 2)),
            num_workers=0,
            progress=False,
            batch_size=8,
        )
        manifest = json.loads(Path(summary["manifest"]).read_text())
        return Check(
            "stage tokenize",
            True,
            f"{manifest['num_source_images']} images -> "
            f"{manifest['num_samples']} token sequences ({crop}) in {len(manifest['shards'])} "
            f"shards, {manifest['tokens_per_sample']} tokens each; job {_job(out / 'tokenize')}",
        )

    # -- training and throughput ---------------------------------------------------------------

    def train(self) -> tuple[Check, dict]:
        out, model = self.out, self.cfg.model
        r = self.launch(
            self.TrainJob(rehearse_training),
            self.spec,
            str(out / "train" / model),
            launcher=self.train_launcher,
            record=out / "train" / JOB_RECORD,
            name="preflight_train",
        )
        layout = (
            f"{r['world_size']} process(es) on {r['device']} ({r['machine']}), DDP "
            f"{r['backend']}, {r['dtype']}, compile {r['compile']}, micro-batch "
            f"{r['micro_batch']}, {r['images_per_s_per_gpu']:,.2f} images/s per process; "
            f"job {_job(out / 'train')}"
        )
        self.throughput["train"][model] = _train_record(r)
        return Check("stage train", True, f"{model}: {r['reference_step']} steps, {layout}"), r

    def measure(self, size: str) -> Check:
        """Another model size of the study, uninterrupted: its training throughput."""
        size_cfg = _toy_train_config(self.study, size, self.scale.train_steps)
        size_spec = {**self.spec, "config": size_cfg.to_dict(), "interrupt": "none"}
        r = self.launch(
            self.TrainJob(rehearse_training),
            size_spec,
            str(self.out / "train" / size),
            launcher=self.train_launcher,
            record=self.out / "train" / size / JOB_RECORD,
            name=f"preflight_train_{size}",
        )
        self.throughput["train"][size] = _train_record(r)
        return Check(
            f"throughput train {size}",
            True,
            f"{r['images_per_s_per_gpu']:,.2f} images/s "
            f"per GPU ({r['world_size']} x {r['device']}, {r['dtype']}, micro-batch "
            f"{r['micro_batch']})",
        )

    # -- sample, evaluate and the table ----------------------------------------------------

    def sample(self) -> Check:
        out, model = self.out, self.cfg.model
        final = out / "train" / model / "uninterrupted" / "checkpoints" / "final.pt"
        sampling = _first_sampling(self.study)
        bench_batch = self.scale.sample_batch or self.config["sampling"]["chunk_size"]
        r = self.launch(
            rehearse_sampling,
            str(final),
            str(self.tokenizer),
            str(self._samples()),
            launcher=self.launchers["sample"],
            record=out / "sample" / JOB_RECORD,
            name="preflight_sample",
            num_classes=min(self.scale.classes, self.config["data"]["num_classes"]),
            sampling=sampling,
            dtype="fp32",
            device=self.device,
            bench_batch=bench_batch,
            bench_steps=2,
        )
        self.throughput["sample"][model] = {
            k: r[k] for k in ("images_per_s_per_gpu", "batch_size", "dtype", "device", "machine")
        }
        if "device_memory" in r:  # the GPU the sample jobs run on
            self.sample_gpu = (r["device_memory"], r["device_name"])
        return Check(
            "stage sample",
            True,
            f"{r['num_samples']} images (KV cache, guidance "
            f"{sampling.get('guidance_scale')}) from {model}; {r['images_per_s_per_gpu']:,.2f}"
            f" images/s per {'GPU' if r['device'] == 'cuda' else 'process'} at batch "
            f"{bench_batch} ({r['dtype']}, decoding included); job "
            f"{_job(out / 'sample')}",
        )

    def _samples(self) -> Path:
        return self.out / "sample" / "samples.npz"

    def _metrics(self) -> Path:
        return self.out / "evaluate" / METRICS_JSON

    def _evaluate_needs(self) -> list[str]:
        ev = self.config["evaluation"]
        needs = ["stage sample", "launcher evaluate", f"extractor {ev['extractor']}"]
        files = [k for k in ("evaluation.reference", "evaluation.weights") if k in self.needed]
        return needs + [f"file {k}" for k in files]

    def evaluate(self) -> Check:
        from rar.evaluation.scorer import evaluate as score

        ev = self.config["evaluation"]
        reference = ev["reference"] or str(self.images / "val")
        # ADM's batch: the workflow's feature cache, so its 10,000 reference images are
        # featurized once for the preflight and the grid; the toy's own held-out images: a
        # cache of its own.
        cache = (
            Path(self.study.prefix, "cache", "features")
            if ev["reference"]
            else (self.out / "cache")
        )
        r = self.launch(
            score,
            str(self._samples()),
            str(Path(reference).resolve()),
            launcher=self.launchers["evaluate"],
            record=self.out / "evaluate" / JOB_RECORD,
            name="preflight_evaluate",
            extractor=ev["extractor"],
            weights=str(Path(ev["weights"]).resolve()) if ev.get("weights") else None,
            cache_dir=str(cache.resolve()),
            out=str(self._metrics()),
            device=self.device,
        )
        names = ("fid", "isc", "precision", "recall")
        values = ", ".join(
            f"{k} {v:.3g}"
            for k, v in r.items()
            if k.startswith(names) and isinstance(v, (int, float)) and not isinstance(v, bool)
        )
        return Check(
            "stage evaluate",
            True,
            f"{r['num_samples']} samples scored with {ev['extractor']} "
            f"against {reference} ({r['num_reference_images'] or 'mu/sigma'} reference images): "
            f"{values}; job {_job(self.out / 'evaluate')}",
        )

    def table(self) -> Check:
        from rar.report import make_table

        out, cfg = self.out, self.cfg
        row = {
            "label": f"preflight {cfg.model}",
            "keys": {},
            "run": cfg.run_id(),
            "evaluation": "preflight",
            "paper": {},
            "failure": None,
            "sweep": None,
        }
        df = make_table(
            table="preflight",
            rows=[row],
            metrics=[self._metrics()],
            csv=out / "table.csv",
            md=out / "table.md",
        )
        status = df["status"].iloc[0]
        ok = str(status).startswith("ok")
        return Check(
            "stage table",
            ok,
            f"{out / 'table.csv'}: row status {status!r}",
            "" if ok else "see rar.report.make_table",
        )


def _train_record(r: dict) -> dict:
    keys = (
        "images_per_s_per_gpu",
        "images_per_s",
        "world_size",
        "micro_batch",
        "global_batch",
        "dtype",
        "compile",
        "device",
        "machine",
    )
    return {k: r[k] for k in keys if k in r}


def _job(folder: Path) -> str:
    """The job id and backend recorded in `<folder>/job.json`."""
    with contextlib.suppress(KeyError, TypeError):
        rec = load_record(folder / JOB_RECORD, quiet=True)
        requeued = f", requeued {rec.get('requeues', 0)}x" if rec["backend"] == "slurm" else ""
        return f"{rec['job_id']} ({rec['backend']}{requeued})"
    return "?"
