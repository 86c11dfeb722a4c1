"""The plan of a study (`rar plan`): totals of epochs, GPU-hours and samples, the plan as JSON,
the plan as text, and the throughput `rar preflight` measured. Torch-free."""

from __future__ import annotations

import json
from pathlib import Path

from rar.experiments.data_sets import DATA_ROOT, read_source
from rar.experiments.resources import missing_resources
from rar.experiments.schedule import training_jobs, wall_clock
from rar.experiments.study import PAPER_SAMPLES, Study, StudyError


def measured_throughput(study: Study, path: str | Path | None = None) -> dict | None:
    """The throughput `rar preflight` measured on the user's nodes (`throughput.json`: training
    and sampling images/s per GPU by model size), from `path` or, by default,
    `<prefix>/preflight/throughput.json` when it exists; None without one. A file that is not
    such a record is a StudyError naming it."""
    file = Path(path) if path else Path(study.prefix) / "preflight" / "throughput.json"
    if path is None and not file.exists():
        return None
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise StudyError(f"{file}: not a readable throughput record ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("train"), dict):
        raise StudyError(f"{file}: not a throughput record of `rar preflight` (no 'train' figures)")
    return {**data, "file": str(file)}


def epochs_left(study: Study) -> dict[str, float]:
    """Run id -> the epochs its training jobs still have to train, from what its folder shows
    (`Study.on_disk`; all of them when the study was loaded without a root)."""
    left = {}
    for rid, run in study.runs.items():
        done = max(run.branch_epoch or 0.0, study.on_disk(rid).reached)
        left[rid] = max(0.0, run.end_epoch - done)
    return left


def checkpoint_gb(study: Study, rid: str) -> float:
    """The size of one checkpoint of run `rid`: fp32 weights and AdamW's two moments, 12 bytes
    a parameter (`GeneratorShape.parameters`, exact)."""
    return 12 * study.runs[rid].config.shape.parameters / 1e9


def estimate(study: Study, measured: dict | None = None) -> dict:
    """Planned vs naive training epochs, GPU-hours, evaluations and samples (`rar plan`);
    GPU-hours from `measured` figures (`measured_throughput`) where they exist."""
    planned, naive = study.planned_epochs(), study.naive_epochs()
    left = epochs_left(study)
    kept = {rid: len(run.config.checkpoint_epochs) + 1 for rid, run in study.runs.items()}
    return {
        "config": study.source,
        "runs": len(study.runs),
        "table_runs": len(study.table_runs()),
        "trunks": sum(r.kind == "trunk" for r in study.runs.values()),
        "branches": sum(r.kind == "branch" for r in study.runs.values()),
        "planned_epochs": planned,
        "naive_epochs": naive,
        "saved_fraction": 1 - planned / naive if naive else 0.0,
        "epochs_left": sum(left.values()),
        "gpu_hours": study.gpu_hours(measured=measured),
        "gpu_hours_left": study.gpu_hours(left, measured=measured),
        "checkpoints": sum(kept.values()),
        "checkpoint_gb": sum(n * checkpoint_gb(study, rid) for rid, n in kept.items()),
        "gpu_hours_sources": {
            model: source
            for model, (_, source) in study.gpu_hours_per_epoch(measured).items()
            if model in {r.config.model for r in study.runs.values()}
        },
        "evaluations": len(study.evaluations),
        "sweeps": len(study.sweeps),
        "samples": sum(e.num_samples for e in study.evaluations.values()),
        "sweep_samples": sum(s.num_samples for s in study.sweeps.values()),
    }


def plan_dict(study: Study, measured: dict | None = None) -> dict:
    """Everything `rar plan --json` prints: every run with its resolved training config and
    the tables it serves, every evaluation and sweep with its resolved settings."""
    tables_of = {rid: sorted({row.table for row in study.row_of(rid)}) for rid in study.runs}
    left = epochs_left(study)  # reads every run's folder once
    return {
        "study": study.name,
        "prefix": study.prefix,
        "totals": estimate(study, measured),
        "measured_throughput": measured,
        "datasets": [
            {"name": d.name, "crop": d.crop, "dir": study.data_dir(d.name)}
            for d in study.datasets.values()
        ],
        "tables": {
            name: {
                "recipe": study.recipe(name),
                "rows": [
                    {
                        "label": r.label,
                        "keys": r.keys,
                        "run": r.run,
                        "evaluation": r.evaluation,
                        "paper": r.paper,
                    }
                    for r in rows
                ],
            }
            for name, rows in study.tables.items()
        },
        "runs": [
            {
                "id": run.id,
                "kind": run.kind,
                "trunk": run.trunk,
                "branch_epoch": run.branch_epoch,
                "segments": list(run.segments),
                "epochs_to_train": run.epochs_to_train,
                "epochs_left": left[run.id],
                "note": run.note,
                "tables": tables_of[run.id],
                "config": run.config.to_dict(),
            }
            for run in study.runs.values()
        ],
        "evaluations": [
            {
                "id": ev.id,
                "run": ev.run,
                "epoch": ev.epoch,
                "final": ev.final,
                "checkpoint": ev.checkpoint,
                "sweep": ev.sweep,
                "sampling": ev.sampling,
                "metrics": ev.metrics,
                "num_samples": ev.num_samples,
            }
            for ev in study.evaluations.values()
        ],
        "sweeps": [
            {
                "id": s.id,
                "run": s.run,
                "checkpoint": s.checkpoint,
                "scales": list(s.scales),
                "sampling": s.sampling,
                "metrics": s.metrics,
                "num_samples": s.num_samples,
            }
            for s in study.sweeps.values()
        ],
    }


def _recipe_line(name: str, recipe: dict) -> str:
    arch = {"plain": "plain ViT", "adaln": "adaLN (final)"}.get(recipe["architecture"])
    scales = recipe["guidance_scales"]
    if isinstance(scales, tuple) and len(scales) > 1:
        guidance = f"sweep over {', '.join(f'{s:g}' for s in scales)}"
    elif isinstance(scales, tuple):
        guidance = f"scale {scales[0]:g}"
    else:
        guidance = "per-row scales"
    samples = recipe["samples"]
    samples = f"{samples:,}" if isinstance(samples, int) else "/".join(f"{s:,}" for s in samples)
    return (
        f"  {name}: architecture {arch or recipe['architecture']}, crop {recipe['crop']}, "
        f"guidance {recipe['guidance_schedule']} ({guidance}), {samples} samples per evaluation"
    )


def _count(n: int, noun: str) -> str:
    """`n` `noun`s in words: "1 trunk", "14 branches"."""
    plural = noun + ("es" if noun.endswith(("ch", "sh", "s")) else "s")
    return f"{n} {noun if n == 1 else plural}"


def _hours(hours: float) -> str:
    return f"{hours:,.0f}" if hours >= 10 else f"{hours:.3g}"


def _measured_lines(study: Study, e: dict, measured: dict) -> list[str]:
    """Which GPU-hour figures are measured (by `rar preflight`, on which machine) and which
    are the config's estimates; sampling time at the measured rate."""
    rates = study.gpu_hours_per_epoch(measured)
    models = list(dict.fromkeys(r.config.model for r in study.runs.values()))
    train = measured.get("train", {})
    parts = []
    for model in models:
        if model not in rates:
            parts.append(f"{model} no figure")
        elif rates[model][1] == "measured":
            rec = train[model]
            unit = "GPU" if rec.get("device") == "cuda" else f"{rec.get('device', '?')} process"
            parts.append(
                f"{model} {rates[model][0]:.3g}/epoch measured ({rec['images_per_s_per_gpu']:g} "
                f"images/s per {unit})"
            )
        else:
            parts.append(f"{model} {rates[model][0]:.3g}/epoch the config's estimate")
    lines = [f"  per epoch: {'; '.join(parts)}"]
    machines = sorted({r.get("machine", "?") for r in train.values() if isinstance(r, dict)})
    lines.append(
        f"  measured by rar preflight ({measured.get('file')}, {measured.get('measured', '?')}) "
        f"on {'; '.join(machines)}"
    )
    sample = next(iter((measured.get("sample") or {}).items()), None)
    if sample and sample[1].get("images_per_s_per_gpu"):
        model, rec = sample
        hours = (e["samples"] + e["sweep_samples"]) / rec["images_per_s_per_gpu"] / 3600
        unit = "GPU" if rec.get("device") == "cuda" else f"{rec.get('device', '?')} process"
        lines.append(
            f"  sampling: {rec['images_per_s_per_gpu']:g} images/s per {unit} measured ({model}, "
            f"{rec.get('dtype')}, batch {rec.get('batch_size')}): about {_hours(hours)} "
            f"{unit}-hours for every evaluation's and sweep's samples at that rate"
        )
    return lines


def format_plan(
    study: Study,
    measured: dict | None = None,
    *,
    tables: list[str] | None = None,
    gpus: int = 0,
    gpus_per_run: int = 8,
) -> str:
    """Human-readable plan: the recipe of each table, one line per run, then the totals;
    GPU-hours from `measured` figures (`measured_throughput`) where they exist, saying
    which are measured and which are the config's estimates. `tables`: only what those
    tables need (`snakemake results/<table>.csv`); `gpus` > 0: the wall-clock time on that
    many GPUs, `gpus_per_run` to a training job."""
    for table in tables or ():
        if table not in study.tables:
            raise StudyError(
                f"{study.source}: no table {table!r} (it has {', '.join(study.tables)})"
            )
    lines = [f"study {study.name} (config {study.source}): outputs under {study.prefix}/"]
    lines.append("tables:")
    lines += [_recipe_line(name, study.recipe(name)) for name in tables or study.tables]
    lines += _run_lines(study, tables)
    if tables is None:
        lines += _total_lines(study, measured)
    lines += _table_lines(study, measured, tables, gpus, gpus_per_run)
    lines += _data_lines(study)
    if study.root is not None:
        missing = missing_resources(study.config, study.root, tables)
        lines += [f"missing before the grid can run ({len(missing)}):"] if missing else []
        lines += [f"  {m.line}" for m in missing]
    if any(ev.num_samples < PAPER_SAMPLES for ev in study.evaluations.values()):
        lines.append(
            f"note: under {PAPER_SAMPLES:,} samples per evaluation: not comparable to the paper"
        )
    return "\n".join(lines)


def _run_lines(study: Study, tables: list[str] | None) -> list[str]:
    """One line per run `tables` need (all: None), in the order of the rows it serves: the rows
    (by label; `table (label)` when several tables are shown), its id, model, recipe, epochs
    and how it trains; then why, when a config edit changed that. Trunks that serve no row
    shown come last."""
    epochs: dict[str, float] = {}
    for job in training_jobs(study, tables):
        epochs[job.run] = epochs.get(job.run, 0.0) + job.epochs
    shown = tables or list(study.tables)
    rows = [row for table in shown for row in study.tables[table]]
    served = {rid: [row for row in rows if row.run == rid] for rid in epochs}
    position = {rid: rows.index(r[0]) if r else len(rows) for rid, r in served.items()}

    def label(row) -> str:
        return row.label if len(shown) == 1 else f"{row.table} ({row.label})"

    labels = {rid: "; ".join(label(row) for row in served[rid]) or "-" for rid in epochs}
    # The label column fits the labels up to 40 characters; a longer one overflows its column.
    width = max((n for n in map(len, labels.values()) if n <= 40), default=0)
    lines = ["runs (in row order; a trunk that serves no row shown last):"]
    for rid in sorted(epochs, key=lambda r: (position[r], r)):
        run = study.runs[rid]
        if run.kind == "trunk":
            how = f"trunk, segments end at {', '.join(f'{s:g}' for s in run.segments)}"
            if epochs[rid] < run.config.epochs:  # it starts at 0: this is where it stops
                how += f" (trains to {epochs[rid]:g}: no row here needs its end)"
        elif run.kind == "branch":
            how = f"branch from {run.trunk} at epoch {run.branch_epoch:g}"
        else:
            how = "from scratch"
        lines.append(
            f"  {labels[rid]:{width}s}  {run.id}  {run.config.model:8s} "
            f"{run.config.architecture:5s} {study.datasets[study.dataset_of(run.id)].crop:11s} "
            f"{epochs[rid]:>7g} epochs  {how}"
        )
        if run.note:
            lines.append(f"{'':{width + 4}}{run.note}")
    return lines


def _data_lines(study: Study) -> list[str]:
    """The data sets the runs train on, in the folder every study shares, each with the study
    whose `source.json` claims it; then each one recorded from another source than this
    study's, which the workflow refuses."""
    lines = [f"data sets (under {DATA_ROOT}/, one for every study that names it):"]
    for name, data_set in study.datasets.items():
        claim = ""
        if study.root is not None:
            try:
                record = read_source(study.root / study.data_dir(name))
            except ValueError:
                record = None  # data_clashes says why
            claim = f": made by study {record.study!r}" if record else ": no source record yet"
        lines.append(f"  {name} ({data_set.crop}){claim}")
    lines += [f"  REFUSED: {clash}" for clash in study.data_clashes()]
    return lines


def _total_lines(study: Study, measured: dict | None) -> list[str]:
    """The whole study: epochs against no trunks, what is left, checkpoints, GPU-hours,
    evaluations and sweeps."""
    e = estimate(study, measured)
    lines = [
        f"training: {e['planned_epochs']:g} epochs planned vs {e['naive_epochs']:g} "
        f"without shared trunks ({e['saved_fraction']:.0%} saved), {e['runs']} runs "
        f"({_count(e['trunks'], 'trunk')}, {_count(e['branches'], 'branch')}), "
        f"{_count(len(study.datasets), 'data set')}"
    ]
    if study.root is not None:
        hours = "" if e["gpu_hours_left"] is None else f", {_hours(e['gpu_hours_left'])} GPU-hours"
        done = (
            "nothing of it is on disk yet"
            if e["epochs_left"] == e["planned_epochs"]
            else ("the rest is on disk")
        )
        lines.append(
            f"to train now: {e['epochs_left']:g} epochs{hours} ({done} under "
            f"{study.root / study.prefix})"
        )
    every = study.config["trunks"]["keep_every"]
    lines.append(
        f"checkpoints kept: {e['checkpoints']} (each run's last, its branch points and curve "
        f"epochs{f', every {every:g} epochs of a trunk' if every else ''}), about "
        + (
            f"{e['checkpoint_gb']:,.1f} GB"
            if e["checkpoint_gb"] >= 1
            else f"{e['checkpoint_gb'] * 1000:.0f} MB"
        )
    )
    is_measured = "measured" in e["gpu_hours_sources"].values()
    if e["gpu_hours"] is not None and is_measured:
        lines.append(f"GPU-hours: {_hours(e['gpu_hours'])} (measured figures where there are some)")
    elif e["gpu_hours"] is not None:
        lines.append(f"estimated: {e['gpu_hours']:,.0f} GPU-hours (throughput in the config)")
    else:
        lines.append(
            "estimated GPU-hours: set throughput.gpu_hours_per_epoch in the config, or measure "
            "with `rar preflight`"
        )
    if measured:
        lines += _measured_lines(study, e, measured)
    lines.append(f"evaluations: {e['evaluations']} ({e['samples']:,} samples)")
    if study.sweeps:
        lines.append(
            f"guidance sweeps: {e['sweeps']} ({e['sweep_samples']:,} samples, scored in the "
            "sweep jobs)"
        )
    return lines


def _table_lines(
    study: Study, measured: dict | None, tables: list[str] | None, gpus: int, per_run: int
) -> list[str]:
    """Per table, what `snakemake results/<table>.csv` trains (runs shared between tables
    count in each), and the wall-clock time of `tables` (all: None) on `gpus` GPUs."""
    rates = study.gpu_hours_per_epoch(measured)
    per_run_rate = {rid: study.run_gpu_hours_per_epoch(rid, rates) for rid in study.runs}
    known = all(r is not None for r in per_run_rate.values())
    lines = ["by table (what `snakemake results/<table>.csv` trains; shared runs in each):"]
    for table in tables or study.tables:
        jobs = training_jobs(study, [table])
        epochs = sum(j.epochs for j in jobs)
        runs = len({j.run for j in jobs})
        hours = sum(j.epochs * per_run_rate[j.run] for j in jobs) if known else None
        lines.append(
            f"  {table}: {len(study.tables[table])} rows, {runs} runs, {epochs:g} epochs"
            + (f", {_hours(hours)} GPU-hours" if hours is not None else "")
        )
        lines.append(f"    {_jobs_line(study, table, len(jobs))}")
    if gpus > 0 and known:
        jobs = training_jobs(study, tables, left=study.root is not None)
        total, chain = wall_clock(jobs, per_run_rate, gpus, min(per_run, gpus))
        what = ", ".join(tables) if tables else "the whole study"
        lines.append(
            f"wall-clock for {what} on {gpus} GPUs ({min(per_run, gpus)} a training job): "
            f"{_duration(total)} of training; its longest chain of jobs (a trunk's segments, "
            f"then the branch after them) alone is {_duration(chain)}"
        )
    elif gpus > 0:
        lines.append("wall-clock: needs GPU-hours per epoch for every model size (see above)")
    return lines


def _jobs_line(study: Study, table: str, training: int) -> str:
    """The heavy jobs of a table's DAG, by kind: training (a trunk's segments each), guidance
    sweeps, and evaluations (its rows, its reference rows and the curves' epochs; each one
    sampling job and one scoring job)."""
    evaluations = {row.evaluation for row in study.rows_with_references(table)}
    evaluations |= set(study.curve_evaluations.get(table, []))
    sweeps = {study.evaluations[e].sweep for e in evaluations if e in study.evaluations}
    sweeps.discard(None)
    return (
        f"jobs: {_count(training, 'training job')}, {_count(len(sweeps), 'guidance sweep')}, "
        f"{_count(len(evaluations), 'evaluation')} (rows, reference rows, curve epochs)"
    )


def _duration(hours: float) -> str:
    return f"{hours:,.1f} hours" if hours < 48 else f"{hours / 24:,.1f} days"
