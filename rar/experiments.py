"""Studies: the config's tables -> runs, evaluations and the training plan. Torch-free.

The Snakefile imports this module at parse time (DESIGN.md), so it imports neither torch nor
anything that does. A study config (`config/config.yaml`, `config/demo.yaml`) holds experiment
facts; this module turns it into:

- runs: the resolved training configs (`rar.config.TrainConfig`). A run's id is a hash of the
  settings that change its weights, so the same run reached from two tables is trained once;
- evaluations: (run, checkpoint epoch, sampling settings, metric settings), hashed the same way,
  so re-scoring never retrains;
- the trunk plan (RAR §3.2, annealing): runs that differ only in `anneal_start`, `anneal_end`
  and `target_order` are identical while r = 1. One trunk trained with r = 1 throughout (the
  purely random run) leaves a checkpoint at every anneal start the tables use, and each run
  starting later than epoch 0 branches from it; runs starting at 0 train from scratch;
- table rows: the readable label of each row and the ids it maps to.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from typing import Any

from rar.config import TrainConfig
from rar.presets import RAR_CONFIGS, SAMPLING_PRESETS

# Settings that do not change a run's weights, left out of its id: which checkpoints it keeps,
# how often, logging, and compilation (a performance switch).
NOT_IDENTITY = frozenset({"checkpoint_epochs", "checkpoint_minutes", "log_every", "compile"})
# Settings in which runs sharing a trunk may differ (all others must be equal).
BRANCH_KEYS = frozenset({"anneal_start", "anneal_end", "target_order"}) | NOT_IDENTITY
SCAN_ORDERS = ("row-major", "spiral-in", "spiral-out", "z-curve", "subsample", "alternate")
SAMPLING_KEYS = ("preset", "guidance_scale", "guidance_power", "temperature", "order")
_ROW_META = ("sampling", "paper", "label")  # row keys that are not training settings
PAPER_SAMPLES = 50_000  # 50 per ImageNet class, as the paper's FIDs


class StudyError(ValueError):
    """A study config that cannot be run; the message names the table, row and key."""


def short_hash(obj: Any) -> str:
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def run_id(cfg: TrainConfig) -> str:
    """The run's identity: a hash of every setting that changes its weights."""
    d = cfg.to_dict()
    return short_hash({k: v for k, v in d.items() if k not in NOT_IDENTITY})


# ##########################################################################################
# The pieces of a study
# ##########################################################################################


@dataclass(frozen=True)
class Run:
    id: str
    config: TrainConfig
    kind: str  # "scratch" | "trunk" | "branch"
    trunk: str | None = None  # branch: the trunk's run id
    branch_epoch: float | None = None  # branch: the trunk epoch it starts from
    segments: tuple[float, ...] = ()  # trunk: the epochs where its training jobs end

    @property
    def epochs_to_train(self) -> float:
        return self.config.epochs - (self.branch_epoch or 0)


@dataclass(frozen=True)
class Evaluation:
    id: str
    run: str  # a run id, or "official_<name>" for a released checkpoint
    epoch: float  # checkpoint epoch; equal to the run's epochs for the final checkpoint
    final: bool
    sampling: dict
    metrics: dict
    checkpoint: str | None = None  # a released checkpoint file (no run of ours)

    @property
    def num_samples(self) -> int:
        return self.metrics["num_per_class"] * self.metrics["num_classes"]


@dataclass(frozen=True)
class Row:
    table: str
    label: str
    keys: dict  # the values that distinguish this row (the table's varying columns)
    run: str
    evaluation: str
    paper: dict = field(default_factory=dict)  # the paper's metrics for this row, if given


@dataclass
class Study:
    name: str
    prefix: str  # where outputs go: "results" or "results/<name>"
    config: dict
    runs: dict[str, Run]
    evaluations: dict[str, Evaluation]
    tables: dict[str, list[Row]]
    curve_evaluations: dict[str, list[str]]  # table -> evaluations at intermediate epochs

    # -- paths (DESIGN.md "Files") ---------------------------------------------------------

    @property
    def data_dir(self) -> str:
        return _data_dir(self.prefix, self.config)

    def run_dir(self, run: str) -> str:
        return f"{self.prefix}/runs/{run}"

    def eval_dir(self, evaluation: str) -> str:
        return f"{self.prefix}/evals/{evaluation}"

    def checkpoint(self, run: str, epoch: float | None = None) -> str:
        """The checkpoint file of `run` at `epoch` (None or its last epoch: final.pt). Up to
        its branch point a branch is its trunk, whose checkpoint that is."""
        r = self.runs[run]
        if epoch is None or epoch >= r.config.epochs:
            return f"{self.run_dir(run)}/checkpoints/final.pt"
        if r.kind == "branch" and epoch <= r.branch_epoch:
            return self.checkpoint(r.trunk, epoch)
        return f"{self.run_dir(run)}/checkpoints/epoch_{epoch:g}.pt"

    # -- the training plan -----------------------------------------------------------------

    def planned_epochs(self) -> float:
        return sum(r.epochs_to_train for r in self.runs.values())

    def naive_epochs(self) -> float:
        """Epochs if every run a table needs trained from scratch, trunks unused."""
        needed = {row.run for rows in self.tables.values() for row in rows if row.run in self.runs}
        return sum(self.runs[r].config.epochs for r in needed)

    def gpu_hours(self, epochs_by_run: dict[str, float] | None = None) -> float | None:
        """GPU-hours from the config's `throughput.gpu_hours_per_epoch` per model size."""
        rates = self.config.get("throughput", {}).get("gpu_hours_per_epoch", {})
        total = 0.0
        for run in self.runs.values():
            rate = rates.get(run.config.model)
            if rate is None:
                return None
            epochs = (epochs_by_run or {}).get(run.id, run.epochs_to_train)
            total += rate * epochs
        return total

    def report_rows(self, table: str) -> list[dict]:
        """What rar.report.make_table needs of each row of `table`, failure records included
        (the evaluation's, then the run's)."""
        return [
            {
                "label": row.label,
                "keys": row.keys,
                "run": row.run,
                "evaluation": row.evaluation,
                "paper": row.paper,
                "failure": [
                    f"{self.eval_dir(row.evaluation)}/failure.txt",
                    f"{self.run_dir(row.run)}/failure.txt",
                ],
            }
            for row in self.tables[table]
        ]

    def metrics_files(self, table: str) -> list[str]:
        return [f"{self.eval_dir(row.evaluation)}/metrics.json" for row in self.tables[table]]

    def row_of(self, run: str) -> list[Row]:
        return [row for rows in self.tables.values() for row in rows if row.run == run]


# ##########################################################################################
# Building a study from its config
# ##########################################################################################


def _data_dir(prefix: str, config: dict) -> str:
    return f"{prefix}/data/{config['data']['dataset']}-{config['tokenizer']['name']}"


def _merge(base: dict, override: dict) -> dict:
    """Nested dict merge: mappings merge key by key, everything else is replaced."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _train_settings(config: dict, data_dir: str) -> dict:
    """The study-wide training settings: the config's `train:` plus what data and tokenizer
    fix (codebook, classes, tokens, the shard directory and the epoch size)."""
    data, tok = config["data"], config["tokenizer"]
    fixed = {
        "data": data_dir,
        "source_images": data["source_images"],
        "num_classes": data["num_classes"],
        "codebook_size": tok["codebook_size"],
        "num_tokens": tok["grid"] ** 2,
    }
    return {**config.get("train", {}), **fixed}


def _sampling_settings(sampling: dict) -> dict:
    """Resolved sampling settings: the preset's values, overridden by explicit keys."""
    preset = sampling.get("preset")
    if preset is not None and preset not in SAMPLING_PRESETS:
        raise StudyError(
            f"sampling: unknown preset {preset!r}; known: {', '.join(SAMPLING_PRESETS)}"
        )
    resolved = dict(SAMPLING_PRESETS.get(preset, {}))
    resolved.update({k: v for k, v in sampling.items() if k in SAMPLING_KEYS and k != "preset"})
    resolved["order"] = resolved.get("order", "row-major")
    if resolved["order"] not in (*SCAN_ORDERS, "random"):
        raise StudyError(f"sampling: unknown order {resolved['order']!r}")
    missing = [k for k in ("guidance_scale", "guidance_power", "temperature") if k not in resolved]
    if missing:
        raise StudyError(f"sampling: set a preset or {', '.join(missing)}")
    return {k: resolved[k] for k in sorted(resolved)}


def _row_config(train: dict, overrides: dict, where: str) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise StudyError(f"{where}: unknown key(s) {', '.join(unknown)}")
    if "target_order" in overrides and overrides["target_order"] not in SCAN_ORDERS:
        raise StudyError(
            f"{where}: unknown scan order {overrides['target_order']!r}; known: "
            f"{', '.join(SCAN_ORDERS)}"
        )
    model = overrides.get("model", train.get("model", "rar_l"))
    if model not in RAR_CONFIGS:
        raise StudyError(f"{where}: unknown model size {model!r}; known: {', '.join(RAR_CONFIGS)}")
    try:
        return TrainConfig.from_dict({**train, **overrides}, source=where)
    except ValueError as err:
        raise StudyError(str(err)) from err


def _label(keys: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in keys.items())


def load_study(config: dict) -> Study:
    """Resolve a (schema-validated) study config into runs, evaluations, tables and trunks."""
    name = config.get("study", "paper")
    prefix = "results" if name == "paper" else f"results/{name}"
    data_dir = _data_dir(prefix, config)
    train = _train_settings(config, data_dir)
    study_sampling = config.get("sampling", {})
    metric_settings = {
        "extractor": config["evaluation"]["extractor"],
        "reference": config["evaluation"].get("reference"),
        "num_per_class": study_sampling.get("num_per_class", 50),
        "num_classes": config["data"]["num_classes"],
        "seed": study_sampling.get("seed", 0),
    }
    configs: dict[str, TrainConfig] = {}
    evaluations: dict[str, Evaluation] = {}
    tables: dict[str, list[Row]] = {}
    curves: dict[str, list[tuple[str, float, dict]]] = {}

    def evaluation_of(rid: str, epoch: float, final: bool, sampling: dict) -> str:
        eid = short_hash({"run": rid, "epoch": epoch, "sampling": sampling, **metric_settings})
        evaluations[eid] = Evaluation(eid, rid, epoch, final, sampling, metric_settings)
        return eid

    for tname, table in (config.get("tables") or {}).items():
        base = table.get("base", {})
        rows = table.get("rows") or []
        if not rows:
            raise StudyError(f"table {tname}: no rows")
        # The table's columns: the keys its rows set, in order of first appearance.
        varying = list(dict.fromkeys(k for r in rows for k in r if k not in _ROW_META))
        tables[tname], curves[tname] = [], []
        for i, row in enumerate(rows):
            where = f"table {tname}, row {i + 1}"
            merged = _merge(base, row)
            sampling = _sampling_settings(_merge(study_sampling, merged.get("sampling", {})))
            train_over = {
                k: v for k, v in merged.items() if k not in ("sampling", "paper", "label")
            }
            cfg = _row_config(train, train_over, where)
            rid = run_id(cfg)
            configs.setdefault(rid, cfg)
            eid = evaluation_of(rid, cfg.epochs, True, sampling)
            keys = {k: row.get(k, base.get(k, getattr(cfg, k, None))) for k in varying}
            label = row.get("label") or _label(keys)
            tables[tname].append(Row(tname, label, keys, rid, eid, dict(row.get("paper", {}))))
            for epoch in table.get("evaluate_epochs", []):
                if 0 < epoch < cfg.epochs:
                    curves[tname].append((rid, float(epoch), sampling))

    official = config.get("official") or {}
    if official:
        tables["official"] = []
        for name, spec in official.items():
            where = f"official, {name}"
            sampling = _sampling_settings(_merge(study_sampling, spec.get("sampling", {})))
            ckpt = spec.get("checkpoint")
            if not ckpt:
                raise StudyError(f"{where}: key 'checkpoint' (the released file) is not set")
            key = f"official_{name}"
            eid = short_hash({"checkpoint": ckpt, "sampling": sampling, **metric_settings})
            evaluations[eid] = Evaluation(eid, key, 0.0, True, sampling, metric_settings, ckpt)
            row = Row("official", name, {"model": name}, key, eid, dict(spec.get("paper", {})))
            tables["official"].append(row)
        curves["official"] = []

    runs = plan_trunks(configs, {(r, e) for rows in curves.values() for r, e, _ in rows})
    curve_ids = {
        t: [evaluation_of(r, e, False, s) for r, e, s in rows] for t, rows in curves.items()
    }
    return Study(name, prefix, config, runs, evaluations, tables, curve_ids)


# ##########################################################################################
# The trunk plan
# ##########################################################################################


def _trunk_key(cfg: TrainConfig) -> str:
    d = cfg.to_dict()
    return short_hash({k: v for k, v in d.items() if k not in BRANCH_KEYS})


def plan_trunks(configs: dict[str, TrainConfig], curve_points: set[tuple[str, float]]) -> dict:
    """Assign every run its way of being trained and the checkpoints it must keep.

    Runs whose anneal starts after epoch 0 branch from the trunk of their group (the run with
    r = 1 throughout: anneal (E, E), raster target). The trunk is trained in segments ending at
    each branch epoch, so a branch can start as soon as its epoch is reached.
    """
    groups: dict[str, list[str]] = {}
    for rid, cfg in configs.items():
        groups.setdefault(_trunk_key(cfg), []).append(rid)
    runs: dict[str, Run] = {}
    for members in groups.values():
        any_cfg = configs[members[0]]
        E = any_cfg.epochs
        trunk_cfg = replace(any_cfg, anneal_start=E, anneal_end=E, target_order="row-major")
        trunk_id = run_id(trunk_cfg)
        late = [r for r in members if configs[r].anneal_start > 0 and r != trunk_id]
        # A trunk pays when the epochs its branches skip exceed what it costs itself (nothing
        # extra when a table needs the purely random run anyway).
        saved = sum(configs[r].anneal_start for r in late)
        if saved <= (0 if trunk_id in members else E):
            late, trunk_id = [], None
        starts = sorted({configs[r].anneal_start for r in late})
        if trunk_id is not None:
            configs.setdefault(trunk_id, trunk_cfg)
            segments = tuple(s for s in starts if s < E)
            runs[trunk_id] = Run(trunk_id, configs[trunk_id], "trunk", segments=segments)
        for rid in members:
            cfg = configs[rid]
            if rid == trunk_id:
                continue
            if rid in late:
                runs[rid] = Run(rid, cfg, "branch", trunk=trunk_id, branch_epoch=cfg.anneal_start)
            else:
                runs[rid] = Run(rid, cfg, "scratch")
    # Named checkpoints: branch points (trunks) and the epochs evaluated for curves, kept by
    # the run that trains through them (a branch's trunk, up to its branch point).
    keep_at: dict[str, set[float]] = {rid: set(run.segments) for rid, run in runs.items()}
    for rid, epoch in curve_points:
        run = runs[rid]
        early = run.kind == "branch" and epoch <= run.branch_epoch
        keep_at[run.trunk if early else rid].add(epoch)
    for rid, run in runs.items():
        keep = keep_at[rid]
        runs[rid] = replace(run, config=replace(run.config, checkpoint_epochs=tuple(sorted(keep))))
    return runs


def load_study_file(path) -> Study:
    """`load_study` of a YAML file; every problem (missing file, bad YAML, bad study) is a
    StudyError that names the file."""
    import yaml

    try:
        with open(path) as f:
            config = yaml.safe_load(f)
        return load_study(config)
    except (OSError, yaml.YAMLError, StudyError) as err:
        raise StudyError(f"{path}: {err}") from err
    except (KeyError, TypeError, AttributeError) as err:  # not shaped like a study
        raise StudyError(f"{path}: missing or malformed key {err}") from err


def estimate(study: Study) -> dict:
    """Planned vs naive training epochs and GPU-hours (`rar plan`)."""
    planned, naive = study.planned_epochs(), study.naive_epochs()
    return {
        "runs": len(study.runs),
        "table_runs": len(
            {row.run for rows in study.tables.values() for row in rows if row.run in study.runs}
        ),
        "trunks": sum(r.kind == "trunk" for r in study.runs.values()),
        "branches": sum(r.kind == "branch" for r in study.runs.values()),
        "planned_epochs": planned,
        "naive_epochs": naive,
        "saved_fraction": 1 - planned / naive if naive else 0.0,
        "gpu_hours": study.gpu_hours(),
        "evaluations": len(study.evaluations),
        "samples": sum(e.num_samples for e in study.evaluations.values()),
    }


def format_plan(study: Study) -> str:
    """Human-readable plan: one line per run, then the totals."""
    lines = [f"study {study.name}: outputs under {study.prefix}/"]
    for run in sorted(study.runs.values(), key=lambda r: (r.kind != "trunk", r.id)):
        labels = "; ".join(f"{row.table} ({row.label})" for row in study.row_of(run.id))
        if run.kind == "trunk":
            how = f"trunk, segments end at {', '.join(f'{s:g}' for s in run.segments)}"
        elif run.kind == "branch":
            how = f"branch from {run.trunk} at epoch {run.branch_epoch:g}"
        else:
            how = "from scratch"
        lines.append(
            f"  {run.id}  {run.config.model:8s} {run.epochs_to_train:>7g} epochs  {how}"
            + (f"  <- {labels}" if labels else "")
        )
    e = estimate(study)
    lines.append(
        f"training: {e['planned_epochs']:g} epochs planned vs {e['naive_epochs']:g} "
        f"without shared trunks ({e['saved_fraction']:.0%} saved), {e['runs']} runs "
        f"({e['trunks']} trunks, {e['branches']} branches)"
    )
    if e["gpu_hours"] is not None:
        lines.append(f"estimated: {e['gpu_hours']:,.0f} GPU-hours (throughput in the config)")
    else:
        lines.append("estimated GPU-hours: set throughput.gpu_hours_per_epoch in the config")
    n = e["samples"]
    lines.append(f"evaluations: {e['evaluations']} ({n:,} samples)")
    if any(ev.num_samples < PAPER_SAMPLES for ev in study.evaluations.values()):
        lines.append(
            f"note: under {PAPER_SAMPLES:,} samples per evaluation: not comparable to the paper"
        )
    return "\n".join(lines)
