"""Studies: the config's tables -> runs, evaluations and the training plan. Torch-free.

The Snakefile imports this module at parse time (DESIGN.md), so it imports neither torch nor
anything that does. `load_study` is the one way any tool reads a study (the Snakefile,
`rar plan`, `rar status`, `rar report`): it applies `rar/schemas/study.schema.yaml` (checks,
then the defaults written there), then the checks that need the package, and it is the only
place identities come from. A study config (`config/config.yaml`, `config/demo.yaml`) holds
experiment facts; this module turns it into:

- data sets: one per (dataset, tokenizer, crop) the rows use, tokenized once. The paper's two
  recipes train on different crops (RAR §4.1: center + flip for the ablations, ten-crop for
  the final models), so a row's crop is part of its run's identity through its data folder;
- runs: the resolved training configs (`rar.config.TrainConfig`). A run's id is a hash of the
  settings that change its weights (`TrainConfig.run_id`), so the same run reached from two
  tables is trained once;
- evaluations: (run, checkpoint epoch, sampling settings, metric settings), hashed the same
  way, so re-scoring never retrains;
- guidance sweeps: a row whose sampling lists `guidance_scales` is sampled at each scale on a
  smaller set, scored, and evaluated for its table at the scale with the lowest FID (the paper
  does not give the ablations' scale). A sweep is keyed like an evaluation, so rows with the
  same run and settings share it;
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
from functools import cache
from pathlib import Path
from typing import Any

from rar.config import TrainConfig
from rar.presets import (
    ARCHITECTURES,
    GUIDANCE_SCHEDULES,
    RAR_CONFIGS,
    SAMPLING_PRESETS,
    SCAN_ORDERS,
)

SCHEMA = Path(__file__).parent / "schemas" / "study.schema.yaml"
# Sampling keys a table's base or a row may set; they make an evaluation's identity.
SAMPLING_KEYS = (
    "preset", "guidance_scale", "guidance_scales", "guidance_power", "guidance_schedule",
    "temperature", "order",
)  # fmt: skip
_ROW_META = ("sampling", "paper", "label", "crop")  # row keys that are not TrainConfig keys
_NOT_COLUMNS = ("sampling", "paper", "label")  # row keys that are not table columns
PAPER_SAMPLES = 50_000  # 50 per ImageNet class, as the paper's FIDs
# The reference rows of a table (`evaluation.reference_rows`): real held-out images scored
# like samples (the floor: what a perfect generator reaches at that sample count) and samples
# of a run's initial weights (the ceiling: what a generator that learned nothing reaches).
# A third, between them: the floor's images through the tokenizer and back, the best a generator
# in its token space can reach.
FLOOR, CEILING = "real held-out images", "untrained model"
RECONSTRUCTED = "tokenizer reconstructions"
EVALUATION_KINDS = ("model", "real", "reconstructed", "untrained")
# The crops of the data stage (rar.data.images) and how they appear in folder names.
CROPS = {"center": "center", "center+flip": "center_flip", "tencrop": "tencrop"}


class StudyError(ValueError):
    """A study config that cannot be run; the message names the file, the key path and the
    value at fault."""


def short_hash(obj: Any) -> str:
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def run_id(cfg: TrainConfig) -> str:
    """The run's identity (`TrainConfig.run_id`: the settings that change its weights)."""
    return cfg.run_id()


# ##########################################################################################
# The pieces of a study
# ##########################################################################################


@dataclass(frozen=True)
class DataSet:
    name: str  # folder name: <dataset>-<tokenizer>-<crop>
    crop: str


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
class Sweep:
    """Sampling one checkpoint at several guidance scales to pick the scale with the lowest
    FID. `sampling` holds every setting but the scale; `metrics` its (smaller) sample count."""

    id: str
    run: str
    scales: tuple[float, ...]
    sampling: dict
    metrics: dict
    checkpoint: str | None = None  # a released checkpoint file (no run of ours)

    @property
    def num_samples(self) -> int:
        return len(self.scales) * self.metrics["num_per_class"] * self.metrics["num_classes"]


@dataclass(frozen=True)
class Evaluation:
    """Scoring one sample set. kind "model": samples of a checkpoint (a run's at `epoch`, or
    a released file); "untrained": samples of the initial weights of run `run`'s config (the
    ceiling row; `checkpoint` is where `rar init-checkpoint` writes them); "real": the
    real images of the folder `images` scored as samples (the floor row; no run, no
    sampling)."""

    id: str
    run: str  # a run id, "official_<name>" for a released checkpoint, "" for real images
    epoch: float  # checkpoint epoch; equal to the run's epochs for the final checkpoint
    final: bool
    sampling: dict
    metrics: dict
    checkpoint: str | None = None  # a released or initial-weights file (no training of ours)
    sweep: str | None = None  # the sweep whose chosen guidance scale this evaluation uses
    kind: str = "model"
    images: str | None = None  # kinds "real", "reconstructed": the folder of class folders

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
    kind: str = "row"  # "row", or "reference" (FLOOR, CEILING: after the table's rows)


@dataclass
class Study:
    name: str
    prefix: str  # where outputs go: "results" or "results/<name>"
    config: dict  # validated, defaults filled
    datasets: dict[str, DataSet]
    runs: dict[str, Run]
    evaluations: dict[str, Evaluation]
    sweeps: dict[str, Sweep]
    tables: dict[str, list[Row]]
    curve_evaluations: dict[str, list[str]]  # table -> evaluations at intermediate epochs
    references: dict[str, list[Row]] = field(default_factory=dict)  # table -> FLOOR, CEILING

    # -- paths (DESIGN.md "Files") ---------------------------------------------------------

    def is_demo(self) -> bool:
        return "demo" in self.config["data"]

    def image_dir(self, split: str = "train") -> str:
        """The class folders of a split of the images (`image_dir`)."""
        return image_dir(self.config, self.prefix, split)

    def untrained_checkpoint(self, run: str) -> str:
        return f"{self.prefix}/untrained/{run}.pt"

    def reconstructions(self, evaluation: str) -> str:
        """The sample file of a "reconstructed" evaluation (`rar reconstruct`)."""
        return f"{self.prefix}/reconstructions/{evaluation}.npz"

    def samples_of(self, evaluation: str) -> str:
        """What an evaluation scores: its samples.npz, the reconstructions' file, or (the
        FLOOR row) a folder of real images in class folders."""
        ev = self.evaluations[evaluation]
        if ev.kind == "real":
            return ev.images
        if ev.kind == "reconstructed":
            return self.reconstructions(evaluation)
        return f"{self.eval_dir(evaluation)}/samples.npz"

    def data_dir(self, dataset: str) -> str:
        return f"{self.prefix}/data/{dataset}"

    def run_dir(self, run: str) -> str:
        return f"{self.prefix}/runs/{run}"

    def eval_dir(self, evaluation: str) -> str:
        return f"{self.prefix}/evals/{evaluation}"

    def sweep_dir(self, sweep: str) -> str:
        return f"{self.prefix}/sweeps/{sweep}"

    def checkpoint(self, run: str, epoch: float | None = None) -> str:
        """The checkpoint file of `run` at `epoch` (None or its last epoch: final.pt). Up to
        its branch point a branch is its trunk, whose checkpoint that is."""
        r = self.runs[run]
        if epoch is None or epoch >= r.config.epochs:
            return f"{self.run_dir(run)}/checkpoints/final.pt"
        if r.kind == "branch" and epoch <= r.branch_epoch:
            return self.checkpoint(r.trunk, epoch)
        return f"{self.run_dir(run)}/checkpoints/epoch_{epoch:g}.pt"

    def dataset_of(self, run: str) -> str:
        return Path(self.runs[run].config.data).name

    # -- the training plan -----------------------------------------------------------------

    def planned_epochs(self) -> float:
        return sum(r.epochs_to_train for r in self.runs.values())

    def naive_epochs(self) -> float:
        """Epochs if every run a table needs trained from scratch, trunks unused."""
        return sum(self.runs[r].config.epochs for r in self.table_runs())

    def table_runs(self, table: str | None = None) -> list[str]:
        """The training runs of a table's rows (all tables: None), in row order; an official
        checkpoint has none."""
        names = [table] if table else list(self.tables)
        rows = [row for t in names for row in self.tables[t]]
        return list(dict.fromkeys(r.run for r in rows if r.run in self.runs))

    def gpu_hours_per_epoch(self, measured: dict | None = None) -> dict[str, tuple[float, str]]:
        """GPU-hours per epoch by model size, each with its source: "measured" (training
        images/s per GPU from `rar preflight`'s throughput file, `measured_throughput`:
        source images / (3600 x images/s)) or "estimate" (the config's
        `throughput.gpu_hours_per_epoch`, the fallback for sizes not measured)."""
        rates = {
            model: (rate, "estimate")
            for model, rate in self.config["throughput"].get("gpu_hours_per_epoch", {}).items()
        }
        images = self.config["data"]["source_images"]
        for model, record in ((measured or {}).get("train") or {}).items():
            per_gpu = record.get("images_per_s_per_gpu") if isinstance(record, dict) else None
            if isinstance(per_gpu, (int, float)) and per_gpu > 0:
                rates[model] = (images / (3600 * per_gpu), "measured")
        return rates

    def gpu_hours(
        self, epochs_by_run: dict[str, float] | None = None, measured: dict | None = None
    ) -> float | None:
        """GPU-hours of the plan from `gpu_hours_per_epoch` (measured figures first, then the
        config's); None when a model size has neither."""
        rates = self.gpu_hours_per_epoch(measured)
        total = 0.0
        for run in self.runs.values():
            rate = rates.get(run.config.model)
            if rate is None:
                return None
            epochs = (epochs_by_run or {}).get(run.id, run.epochs_to_train)
            total += rate[0] * epochs
        return total

    def recipe(self, table: str) -> dict:
        """What the rows of `table` share of the paper's two recipes (RAR §4.1): architecture,
        data crop, guidance schedule and sweep; a key whose rows differ lists the values."""
        rows = self.tables[table]

        def values(get) -> Any:
            found = list(dict.fromkeys(get(row) for row in rows))
            return found[0] if len(found) == 1 else found

        def run_cfg(row: Row) -> TrainConfig | None:
            run = self.runs.get(row.run)
            return run.config if run else None

        def sampling(row: Row) -> dict:
            return self.evaluations[row.evaluation].sampling

        return {
            "architecture": values(lambda r: run_cfg(r).architecture if run_cfg(r) else "released"),
            "crop": values(
                lambda r: (
                    self.datasets[self.dataset_of(r.run)].crop if r.run in self.runs else "released"
                )
            ),
            "guidance_schedule": values(lambda r: sampling(r)["guidance_schedule"]),
            "guidance_scales": values(
                lambda r: tuple(
                    sampling(r).get("guidance_scales") or [sampling(r)["guidance_scale"]]
                )
            ),
            "samples": values(lambda r: self.evaluations[r.evaluation].num_samples),
        }

    def report_rows(self, table: str) -> list[dict]:
        """What rar.report.make_table needs of each row of `table`, then of its reference
        rows; failure records included (the evaluation's, then its sweep's, then the run's)."""
        out = []
        for row in self.rows_with_references(table):
            ev = self.evaluations[row.evaluation]
            failures = [f"{self.eval_dir(row.evaluation)}/failure.txt"]
            if ev.sweep:
                failures.append(f"{self.sweep_dir(ev.sweep)}/failure.txt")
            if row.run in self.runs and ev.kind == "model":
                failures.append(f"{self.run_dir(row.run)}/failure.txt")
            out.append(
                {
                    "label": row.label,
                    "keys": row.keys,
                    "run": row.run,
                    "evaluation": row.evaluation,
                    "paper": row.paper,
                    "kind": row.kind,
                    "failure": failures,
                    "sweep": f"{self.sweep_dir(ev.sweep)}/guidance.json" if ev.sweep else None,
                }
            )
        return out

    def rows_with_references(self, table: str) -> list[Row]:
        return self.tables[table] + self.references.get(table, [])

    def metrics_files(self, table: str) -> list[str]:
        return [
            f"{self.eval_dir(row.evaluation)}/metrics.json"
            for row in self.rows_with_references(table)
        ]

    # -- what a table's report is made of (the report rules name these files) -------------

    def plot_kind(self, table: str) -> dict:
        """A heatmap for an annealing grid (both anneal keys vary), else bars by the first
        key."""
        keys = self.tables[table][0].keys
        if {"anneal_start", "anneal_end"} <= set(keys):
            return {"plot": "heatmap"}
        return {"plot": "bars", "key": next(iter(keys))}

    def training_logs(self, table: str) -> list[dict]:
        """[{label, metrics_csv}] of the table's runs, each labelled by its first row."""
        labels: dict[str, str] = {}
        for row in self.tables[table]:
            labels.setdefault(row.run, row.label)
        return [
            {"label": labels[run], "metrics_csv": f"{self.run_dir(run)}/metrics.csv"}
            for run in self.table_runs(table)
        ]

    def grids(self, table: str) -> list[dict]:
        """[{label, png}]: each row's sample grid."""
        return [
            {"label": row.label, "png": f"{self.eval_dir(row.evaluation)}/grid.png"}
            for row in self.tables[table]
        ]

    def sweep_points(self, table: str) -> list[dict]:
        """[{label, guidance}]: the guidance.json of each row chosen by a sweep."""
        return [
            {"label": row["label"], "guidance": row["sweep"]}
            for row in self.report_rows(table)
            if row["sweep"]
        ]

    def curve_points(self, table: str) -> list[dict]:
        """FID-vs-epoch points of a table, [{label, epoch, metrics}]: its intermediate
        evaluations, each curve ending with its run's final evaluation."""
        label = {row.run: row.label for row in reversed(self.tables[table])}
        evaluations = list(self.curve_evaluations[table])
        curve_runs = {self.evaluations[e].run for e in evaluations}
        evaluations += [row.evaluation for row in self.tables[table] if row.run in curve_runs]
        return [
            {
                "label": label[self.evaluations[e].run],
                "epoch": self.evaluations[e].epoch,
                "metrics": f"{self.eval_dir(e)}/metrics.json",
            }
            for e in dict.fromkeys(evaluations)
        ]

    def outputs(self) -> list[str]:
        """Every file the study makes by default: each table (CSV and Markdown) with its
        plots, the scan-order figure, and Table 5 when the config asks for it."""
        p = self.prefix
        out = [f"{p}/plots/scan_orders.png"]
        if self.config.get("throughput_table"):
            out += [f"{p}/table5.csv", f"{p}/table5.md"]
        for table in self.tables:
            out += [f"{p}/{table}.csv", f"{p}/{table}.md"]
            plots = ("fid", "loss", "samples") if self.table_runs(table) else ("fid", "samples")
            out += [f"{p}/plots/{table}_{kind}.png" for kind in plots]
            if self.curve_evaluations[table]:
                out.append(f"{p}/plots/{table}_fid_vs_epoch.png")
            if any(self.evaluations[row.evaluation].sweep for row in self.tables[table]):
                out.append(f"{p}/plots/{table}_guidance.png")
        return out

    def row_of(self, run: str) -> list[Row]:
        return [row for rows in self.tables.values() for row in rows if row.run == run]


# ##########################################################################################
# The schema: validation and defaults
# ##########################################################################################


@cache
def _schema() -> dict:
    import yaml

    return yaml.safe_load(SCHEMA.read_text())


def _resolve(schema: dict) -> dict:
    ref = schema.get("$ref")
    if ref:
        target = _schema()
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        return {**_resolve(target), **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _fill_defaults(instance: Any, schema: dict) -> None:
    """Write the schema's `default`s into `instance` where a key is missing, recursively (what
    Snakemake's `validate(..., set_default=True)` does, for every consumer)."""
    schema = _resolve(schema)
    for sub in schema.get("allOf", []):
        _fill_defaults(instance, sub)
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        for key, sub in props.items():
            sub = _resolve(sub) if isinstance(sub, dict) else {}
            if key not in instance and "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
            if key in instance:
                _fill_defaults(instance[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, value in instance.items():
                if key not in props:
                    _fill_defaults(value, extra)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for item in instance:
            _fill_defaults(item, schema["items"])


def _key_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out.lstrip(".") or "(top level)"


def _known_keys(schema: dict) -> set[str]:
    schema = _resolve(schema)
    known = set(schema.get("properties", {}))
    for sub in schema.get("allOf", []):
        known |= _known_keys(sub)
    return known


def _describe(error) -> str | None:
    """One line for a jsonschema error: the key path, then what is wrong with which value."""
    where = _key_path(error.absolute_path)
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        known = _known_keys(error.schema)
        unknown = sorted(set(error.instance) - known)
        if not unknown:  # a side effect of another error inside (reported on its own)
            return None
        names = ", ".join(map(repr, unknown))
        return f"{where}: unknown key(s) {names} (known: {', '.join(sorted(known))})"
    if error.validator == "pattern":
        return (
            f"{where}: {error.instance!r} has characters that are not allowed here (letters, "
            "digits, spaces and _ . / + = : @ , ~ - only: a path or name, never shell syntax)"
        )
    if error.validator == "enum":
        known = ", ".join(map(repr, error.validator_value))
        return f"{where}: {error.instance!r} is not one of {known}"
    return f"{where}: {error.message}"


def validate_config(config: Any, *, source: str = "config") -> dict:
    """`config` checked against the study schema, with its defaults filled in (a new dict).
    Raises StudyError naming `source`, the key path and the value."""
    import jsonschema

    if not isinstance(config, dict):
        raise StudyError(
            f"{source}: a study config is a mapping of keys, got {type(config).__name__}"
        )
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [line for line in map(_describe, errors) if line]
        more = f" (and {len(lines) - 5} more)" if len(lines) > 5 else ""
        lines = lines[:5]
        raise StudyError(f"{source}: " + "; ".join(lines) + more)
    config = copy.deepcopy(config)
    _fill_defaults(config, _schema())
    return config


# ##########################################################################################
# Building a study from its config
# ##########################################################################################


def _merge(base: dict, override: dict) -> dict:
    """Nested dict merge: mappings merge key by key, everything else is replaced."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _dataset_name(config: dict, crop: str) -> str:
    return f"{config['data']['dataset']}-{config['tokenizer']['name']}-{CROPS[crop]}"


def _train_settings(config: dict, prefix: str) -> dict:
    """The study-wide training settings: the config's `train:` plus what data and tokenizer
    fix (codebook, classes, tokens and the epoch size)."""
    data, tok = config["data"], config["tokenizer"]
    fixed = {
        "source_images": data["source_images"],
        "num_classes": data["num_classes"],
        "codebook_size": tok["codebook_size"],
        "num_tokens": tok["grid"] ** 2,
    }
    clash = sorted(set(config["train"]) & {*fixed, "data"})
    if clash:
        raise StudyError(
            f"train: {', '.join(clash)} follow from `data` and `tokenizer`; do not set them here"
        )
    # Where the study's runs are watched (README "Watching a grid"): one TensorBoard folder
    # and one W&B group per study; `train:` may set others.
    watch = {"log_dir": f"{prefix}/tb", "log_group": config["study"]}
    return {**watch, **config["train"], **fixed}


def _check_name(value: Any, known, where: str, what: str) -> None:
    if value not in known:
        raise StudyError(f"{where}: unknown {what} {value!r}; known: {', '.join(known)}")


def _sampling_settings(sampling: dict, where: str) -> dict:
    """Resolved sampling settings: the preset's values, overridden by explicit keys; a sweep
    (`guidance_scales`) replaces `guidance_scale`."""
    preset = sampling.get("preset")
    if preset is not None:
        _check_name(preset, SAMPLING_PRESETS, f"{where}: sampling.preset", "preset")
    resolved = {"guidance_schedule": "pow-cosine", **SAMPLING_PRESETS.get(preset, {})}
    resolved.update({k: v for k, v in sampling.items() if k in SAMPLING_KEYS and k != "preset"})
    resolved.setdefault("order", "row-major")
    _check_name(resolved["order"], (*SCAN_ORDERS, "random"), f"{where}: sampling.order", "order")
    _check_name(
        resolved["guidance_schedule"],
        GUIDANCE_SCHEDULES,
        f"{where}: sampling.guidance_schedule",
        "guidance schedule",
    )
    needed = ["guidance_scale", "temperature"]
    if "guidance_scales" in resolved:  # a sweep: the scale is chosen later
        resolved["guidance_scales"] = sorted(float(s) for s in resolved["guidance_scales"])
        resolved.pop("guidance_scale", None)
        needed.remove("guidance_scale")
    if resolved["guidance_schedule"] == "pow-cosine":
        needed.append("guidance_power")
    else:  # only pow-cosine has an exponent; keep it out of the identity otherwise
        resolved.pop("guidance_power", None)
    missing = [k for k in needed if k not in resolved]
    if missing:
        raise StudyError(f"{where}: sampling: set a preset or {', '.join(missing)}")
    return {k: resolved[k] for k in sorted(resolved)}


def _row_config(train: dict, overrides: dict, where: str) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - known - {"data"})
    if unknown or "data" in overrides:
        bad = unknown or ["data"]
        raise StudyError(
            f"{where}: unknown key(s) {', '.join(map(repr, bad))} (a row sets TrainConfig keys, "
            f"`crop`, `sampling`, `paper` and `label`)"
        )
    settings = {**train, **overrides}
    _check_name(settings.get("model", "rar_l"), RAR_CONFIGS, f"{where}: model", "model size")
    _check_name(
        settings.get("target_order", "row-major"),
        SCAN_ORDERS,
        f"{where}: target_order",
        "scan order",
    )
    _check_name(
        settings.get("architecture", "adaln"),
        ARCHITECTURES,
        f"{where}: architecture",
        "architecture",
    )
    try:
        return TrainConfig.from_dict(settings, source=where)
    except ValueError as err:
        raise StudyError(str(err)) from err


def _label(keys: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in keys.items())


class _Builder:
    """Collects a study's runs, evaluations and sweeps while its tables are read."""

    def __init__(self, config: dict, prefix: str) -> None:
        self.config = config
        self.prefix = prefix
        self.train = _train_settings(config, prefix)
        sampling = config["sampling"]
        self.metric_settings = {
            "extractor": config["evaluation"]["extractor"],
            "reference": config["evaluation"]["reference"],
            "num_per_class": sampling["num_per_class"],
            "num_classes": config["data"]["num_classes"],
            "seed": sampling["seed"],
        }
        self.tokenizer = config["tokenizer"]  # a reconstruction's identity
        self.datasets: dict[str, DataSet] = {}
        self.configs: dict[str, TrainConfig] = {}
        self.evaluations: dict[str, Evaluation] = {}
        self.sweeps: dict[str, Sweep] = {}

    def dataset(self, crop: str) -> str:
        name = _dataset_name(self.config, crop)
        self.datasets.setdefault(name, DataSet(name, crop))
        return f"{self.prefix}/data/{name}"

    def run(self, overrides: dict, crop: str, where: str) -> TrainConfig:
        cfg = _row_config({**self.train, "data": self.dataset(crop)}, overrides, where)
        self.configs.setdefault(cfg.run_id(), cfg)
        return cfg

    def sweep(self, run: str, sampling: dict, checkpoint: str | None) -> str | None:
        """The sweep that picks `sampling`'s guidance scale (None: no sweep)."""
        if "guidance_scales" not in sampling:
            return None
        base = {k: v for k, v in sampling.items() if k != "guidance_scales"}
        metrics = {
            **self.metric_settings,
            "num_per_class": self.config["sampling"]["sweep_per_class"],
        }
        scales = tuple(sampling["guidance_scales"])
        key = {"checkpoint": checkpoint} if checkpoint else {"run": run}
        sid = short_hash({**key, "scales": scales, "sampling": base, **metrics})
        self.sweeps[sid] = Sweep(sid, run, scales, base, metrics, checkpoint)
        return sid

    def floor(self, images: str, kind: str = "real") -> str:
        """The FLOOR evaluation: the real images of `images` scored as samples (kind "real");
        or, kind "reconstructed", those images through the study's tokenizer and back."""
        key = {kind: images, **self.metric_settings}
        if kind == "reconstructed":
            key["tokenizer"] = self.tokenizer
        eid = short_hash(key)
        self.evaluations[eid] = Evaluation(
            eid, "", 0.0, True, {}, self.metric_settings, kind=kind, images=images
        )
        return eid

    def ceiling(self, run: str, sampling: dict) -> str:
        """The CEILING evaluation: samples of run `run`'s initial weights with its table's
        sampling; a swept scale is replaced by the lowest of the sweep (guidance cannot help a
        model that learned nothing, and a sweep of it would cost samples for no answer).
        Keyed by the run's trunk key: runs that differ only in their annealing start from the
        same weights, so their tables share one ceiling."""
        sampling = dict(sampling)
        if "guidance_scales" in sampling:
            sampling["guidance_scale"] = min(sampling.pop("guidance_scales"))
        start = self.configs[run].trunk_key()
        eid = short_hash({"untrained": start, "sampling": sampling, **self.metric_settings})
        self.evaluations.setdefault(
            eid,
            Evaluation(
                eid, run, 0.0, False, sampling, self.metric_settings,
                checkpoint=f"{self.prefix}/untrained/{run}.pt", kind="untrained",
            ),
        )  # fmt: skip
        return eid

    def evaluation(
        self, run: str, epoch: float, final: bool, sampling: dict, checkpoint: str | None = None
    ) -> str:
        sweep = self.sweep(run, sampling, checkpoint)
        key = {"checkpoint": checkpoint} if checkpoint else {"run": run, "epoch": epoch}
        eid = short_hash({**key, "sampling": sampling, **self.metric_settings})
        self.evaluations[eid] = Evaluation(
            eid, run, epoch, final, sampling, self.metric_settings, checkpoint, sweep
        )
        return eid


def load_study(config: Any, *, source: str = "config") -> Study:
    """Resolve a study config into data sets, runs, evaluations, sweeps, tables and trunks.

    The one loader of every tool: the schema's checks and defaults first (`validate_config`),
    then the package's. Every error is a StudyError naming `source`, the key and the value.
    """
    config = validate_config(config, source=source)
    try:
        return _build(config)
    except StudyError as err:
        raise StudyError(f"{source}: {err}") from None


def _build(config: dict) -> Study:
    study_name = config["study"]
    prefix = "results" if study_name == "paper" else f"results/{study_name}"
    b = _Builder(config, prefix)
    study_sampling = {k: v for k, v in config["sampling"].items() if k in SAMPLING_KEYS}
    tables: dict[str, list[Row]] = {}
    references: dict[str, list[Row]] = {}
    curves: dict[str, list[tuple[str, float, dict]]] = {}
    _row_config({**b.train, "data": ""}, {}, "train")  # the study-wide keys, checked early
    _check_reference_rows(config)

    for tname, table in config["tables"].items():
        base, rows = table["base"], table["rows"]
        # The table's columns: the keys its rows set, in order of first appearance.
        varying = list(dict.fromkeys(k for r in rows for k in r if k not in _NOT_COLUMNS))
        tables[tname], curves[tname], seen = [], [], {}
        for i, row in enumerate(rows):
            where = f"tables.{tname}.rows[{i}]"
            merged = _merge(base, row)
            sampling = _sampling_settings(_merge(study_sampling, merged.get("sampling", {})), where)
            overrides = {k: v for k, v in merged.items() if k not in _ROW_META}
            cfg = b.run(overrides, merged.get("crop", config["data"]["crop"]), where)
            rid = cfg.run_id()
            eid = b.evaluation(rid, cfg.epochs, True, sampling)
            if eid in seen:
                raise StudyError(
                    f"{where}: the same run and evaluation as tables.{tname}.rows[{seen[eid]}] "
                    "(a duplicate row)"
                )
            seen[eid] = i
            keys = {k: _column_value(k, row, base, cfg) for k in varying}
            label = row.get("label") or _label(keys)
            tables[tname].append(Row(tname, label, keys, rid, eid, dict(row.get("paper", {}))))
            for epoch in table["evaluate_epochs"]:
                if 0 < epoch < cfg.epochs:
                    curves[tname].append((rid, float(epoch), sampling))
        if config["evaluation"]["reference_rows"]:
            first, floor_images = tables[tname][0], image_dir(config, prefix, "floor")
            floor = b.floor(floor_images)
            tokens = b.floor(floor_images, "reconstructed")
            ceiling = b.ceiling(first.run, b.evaluations[first.evaluation].sampling)
            references[tname] = [
                Row(tname, FLOOR, {}, "", floor, kind="reference"),
                Row(tname, RECONSTRUCTED, {}, "", tokens, kind="reference"),
                Row(tname, CEILING, {}, first.run, ceiling, kind="reference"),
            ]

    official = config["official"]
    if official:
        tables["official"], curves["official"] = [], []
        for name, spec in official.items():
            where = f"official.{name}"
            sampling = _sampling_settings(_merge(study_sampling, spec["sampling"]), where)
            key = f"official_{name}"
            eid = b.evaluation(key, 0.0, True, sampling, checkpoint=spec["checkpoint"])
            tables["official"].append(
                Row("official", name, {"model": name}, key, eid, spec["paper"])
            )

    runs = plan_trunks(b.configs, {(r, e) for rows in curves.values() for r, e, _ in rows})
    curve_ids = {
        t: [b.evaluation(r, e, False, s) for r, e, s in rows] for t, rows in curves.items()
    }
    return Study(
        study_name, prefix, config, b.datasets, runs, b.evaluations, b.sweeps, tables, curve_ids,
        references,
    )  # fmt: skip


def image_dir(config: dict, prefix: str, split: str = "train") -> str:
    """The class folders of the images of `split`:

    - "train": what the tokenizer and the runs train on (the demo makes its own; ImageNet's
      train split is linked);
    - "heldout": what validation and `val_nll` use (README "Watching a grid"): the demo's
      val/, or ImageNet's validation split in the class-folder layout beside the train split;
    - "floor": the FLOOR row's real images: the demo's test/ (disjoint from val/, the demo's
      FID reference), or ImageNet's validation split (the ADM reference batch is drawn from
      the train split)."""
    demo = "demo" in config["data"]
    if split == "train":
        return f"{prefix}/images/train" if demo else config["data"]["images"]
    if split == "heldout":
        if demo:
            return f"{prefix}/images/val"
        return str(Path(config["data"]["images"]).parent / "val")  # beside ImageNet's train/
    if split == "floor":
        return f"{prefix}/images/test" if demo else image_dir(config, prefix, "heldout")
    raise ValueError(f"unknown image split {split!r}")


def _check_reference_rows(config: dict) -> None:
    """The floor must be scored at the sample count of the rows it calibrates (FID falls
    with the count), so the demo's test/ holds num_per_class images per class."""
    demo = config["data"].get("demo")
    if not config["evaluation"]["reference_rows"] or demo is None:
        return
    want = config["sampling"]["num_per_class"]
    if demo["test_per_class"] != want:
        raise StudyError(
            f"data.demo.test_per_class: {demo['test_per_class']}, but evaluation.reference_rows "
            f"needs the floor row's real images at the rows' sample count, sampling.num_per_class "
            f"= {want}; set test_per_class: {want}"
        )


def _column_value(key: str, row: dict, base: dict, cfg: TrainConfig) -> Any:
    """What a table shows in column `key` for a row: the row's own value, else the base's,
    else the resolved one."""
    if key in row:
        return row[key]
    if key in base:
        return base[key]
    return getattr(cfg, key, None)


# ##########################################################################################
# The trunk plan
# ##########################################################################################


def plan_trunks(configs: dict[str, TrainConfig], curve_points: set[tuple[str, float]]) -> dict:
    """Assign every run its way of being trained and the checkpoints it must keep.

    Runs whose anneal starts after epoch 0 branch from the trunk of their group (the run with
    r = 1 throughout: anneal (E, E), raster target). The trunk is trained in segments ending at
    each branch epoch, so a branch can start as soon as its epoch is reached.
    """
    groups: dict[str, list[str]] = {}
    for rid, cfg in configs.items():
        groups.setdefault(cfg.trunk_key(), []).append(rid)
    runs: dict[str, Run] = {}
    for members in groups.values():
        any_cfg = configs[members[0]]
        E = any_cfg.epochs
        trunk_cfg = replace(any_cfg, anneal_start=E, anneal_end=E, target_order="row-major")
        trunk_id = trunk_cfg.run_id()
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
    except (OSError, yaml.YAMLError) as err:
        raise StudyError(f"{path}: {err}") from err
    return load_study(config, source=str(path))


# ##########################################################################################
# The plan: `rar plan`
# ##########################################################################################


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


def estimate(study: Study, measured: dict | None = None) -> dict:
    """Planned vs naive training epochs, GPU-hours, evaluations and samples (`rar plan`);
    GPU-hours from `measured` figures (`measured_throughput`) where they exist."""
    planned, naive = study.planned_epochs(), study.naive_epochs()
    return {
        "runs": len(study.runs),
        "table_runs": len(study.table_runs()),
        "trunks": sum(r.kind == "trunk" for r in study.runs.values()),
        "branches": sum(r.kind == "branch" for r in study.runs.values()),
        "planned_epochs": planned,
        "naive_epochs": naive,
        "saved_fraction": 1 - planned / naive if naive else 0.0,
        "gpu_hours": study.gpu_hours(measured=measured),
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


def format_plan(study: Study, measured: dict | None = None) -> str:
    """Human-readable plan: the recipe of each table, one line per run, then the totals;
    GPU-hours from `measured` figures (`measured_throughput`) where they exist, saying
    which are measured and which are the config's estimates."""
    lines = [f"study {study.name}: outputs under {study.prefix}/", "tables:"]
    lines += [_recipe_line(name, study.recipe(name)) for name in study.tables]
    lines.append("runs:")
    for run in sorted(study.runs.values(), key=lambda r: (r.kind != "trunk", r.id)):
        labels = "; ".join(f"{row.table} ({row.label})" for row in study.row_of(run.id))
        if run.kind == "trunk":
            how = f"trunk, segments end at {', '.join(f'{s:g}' for s in run.segments)}"
        elif run.kind == "branch":
            how = f"branch from {run.trunk} at epoch {run.branch_epoch:g}"
        else:
            how = "from scratch"
        lines.append(
            f"  {run.id}  {run.config.model:8s} {run.config.architecture:5s} "
            f"{study.datasets[study.dataset_of(run.id)].crop:11s} "
            f"{run.epochs_to_train:>7g} epochs  {how}" + (f"  <- {labels}" if labels else "")
        )
    e = estimate(study, measured)
    lines.append(
        f"training: {e['planned_epochs']:g} epochs planned vs {e['naive_epochs']:g} "
        f"without shared trunks ({e['saved_fraction']:.0%} saved), {e['runs']} runs "
        f"({e['trunks']} trunks, {e['branches']} branches), {len(study.datasets)} data set(s)"
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
    if any(ev.num_samples < PAPER_SAMPLES for ev in study.evaluations.values()):
        lines.append(
            f"note: under {PAPER_SAMPLES:,} samples per evaluation: not comparable to the paper"
        )
    return "\n".join(lines)
