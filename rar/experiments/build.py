"""Building a study from its validated config: the tables' rows expanded into data sets, runs,
evaluations, guidance sweeps and reference rows, then the trunk plan (`rar.experiments.trunks`).
Torch-free.

`load_study` is the one loader of every tool; the checks that need the package (model sizes,
presets, scan orders, `TrainConfig`'s own) live here, beside the expansion they guard, so that
each error names the row it comes from.
"""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path
from typing import Any

from rar.experiments.data_sets import data_dir
from rar.experiments.records import RunOnDisk, run_on_disk
from rar.experiments.schema import validate_config
from rar.experiments.study import (
    CEILING,
    FLOOR,
    RECONSTRUCTED,
    DataSet,
    Evaluation,
    Row,
    Study,
    StudyError,
    Sweep,
    image_dir,
    short_hash,
)
from rar.experiments.trunks import plan_trunks
from rar.settings.presets import (
    ARCHITECTURES,
    CROP_MODES,
    GUIDANCE_SCHEDULES,
    RAR_CONFIGS,
    SAMPLING_PRESET_VALUES,
    SCAN_ORDERS,
)
from rar.settings.stages import SAMPLING_FIELDS, sampling_values
from rar.settings.training import TrainConfig

# Sampling keys a table's base or a row may set (the schema's `sampling_keys`): the preset,
# each rar.settings.stages.SamplingConfig field and a sweep's scales; they make an evaluation's
# identity.
SAMPLING_KEYS = ("preset", *SAMPLING_FIELDS, "guidance_scales")
# Row keys that are not TrainConfig keys, and those that are not table columns.
_ROW_META = ("sampling", "paper", "label", "crop", "tokenizer", "evaluation")
_NOT_COLUMNS = ("sampling", "paper", "label", "tokenizer", "evaluation")
# TrainConfig keys that follow from the data and the tokenizer: never set by `train:` or a row.
_FIXED = ("source_images", "num_classes", "codebook_size", "num_tokens")
# The crops of the data stage (rar.data.images) and how they appear in folder names.
CROPS = {mode: mode.replace("+", "_") for mode in CROP_MODES}


def _merge(base: dict, override: dict) -> dict:
    """Nested dict merge: mappings merge key by key, everything else is replaced."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _dataset_name(config: dict, crop: str, tok: dict) -> str:
    """`<dataset>-<tokenizer>[-<grid>x<grid>]-<crop>`: the grid only where it is not the study
    tokenizer's, so that the names of the study's own data sets never change."""
    grid = "" if tok["grid"] == config["tokenizer"]["grid"] else f"-{tok['grid']}x{tok['grid']}"
    return f"{config['data']['dataset']}-{tok['name']}{grid}-{CROPS[crop]}"


def _tokenizer_of(config: dict, merged: dict, where: str) -> dict:
    """A row's tokenizer: the study's `tokenizer:` with its table's (or its own) `tokenizer:`
    keys over it. A trained tokenizer (`tokenizer.train`) is the study's only one."""
    tok = {**config["tokenizer"], **merged.get("tokenizer", {})}
    if "train" in tok and tok != config["tokenizer"]:
        raise StudyError(
            f"{where}: tokenizer: the study trains its tokenizer (tokenizer.train); a table "
            "selects another only where the study's tokenizer is released weights"
        )
    return tok


def _tokenizer_fixed(tok: dict) -> dict:
    """The TrainConfig keys a tokenizer fixes: its codebook and its tokens per image."""
    return {"codebook_size": tok["codebook_size"], "num_tokens": tok["grid"] ** 2}


def _train_settings(config: dict, prefix: str) -> dict:
    """The study-wide training settings: the config's `train:` plus what data and tokenizer
    fix (codebook, classes, tokens and the epoch size; a table's tokenizer may refix the
    codebook and tokens)."""
    data = config["data"]
    fixed = {
        "source_images": data["source_images"],
        "num_classes": data["num_classes"],
        **_tokenizer_fixed(config["tokenizer"]),
    }
    clash = sorted(set(config["train"]) & {*fixed, "data"})
    if clash:
        raise StudyError(
            f"train: {', '.join(clash)} follow from `data` and `tokenizer`; do not set them here"
        )
    # Where the study's runs are watched (docs/operating.md "Watching a grid"): one TensorBoard
    # folder and one W&B group per study; `train:` may set others.
    watch = {"log_dir": f"{prefix}/tb", "log_group": config["study"]}
    return {**watch, **config["train"], **fixed}


def _identity(metrics: dict) -> dict:
    """The metric settings an evaluation's or sweep's id is made of: all but the chunk size.
    Which images a seed draws depends on it, but a sample set records it with the rest of
    what makes its images (`rar.sampling.sampler`'s plan, checked on every resume) rather
    than in its id, as the study-wide one always was, so that no existing id changes."""
    return {k: v for k, v in metrics.items() if k != "chunk_size"}


def _check_name(value: Any, known, where: str, what: str) -> None:
    if value not in known:
        raise StudyError(f"{where}: unknown {what} {value!r}; known: {', '.join(known)}")


def _sampling_settings(sampling: dict, where: str) -> dict:
    """Resolved sampling settings: the preset's values, overridden by explicit keys
    (`rar.settings.stages.sampling_values`, without the fallback: a study names its scale and
    temperature, or a preset); a sweep (`guidance_scales`) replaces `guidance_scale`."""
    preset = sampling.get("preset")
    if preset is not None:
        _check_name(preset, SAMPLING_PRESET_VALUES, f"{where}: sampling.preset", "preset")
    explicit = {k: v for k, v in sampling.items() if k in SAMPLING_FIELDS}
    resolved = sampling_values(preset, explicit, fallback=False)
    if "guidance_scales" in sampling:
        resolved["guidance_scales"] = sampling["guidance_scales"]
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
    fixed = sorted(set(overrides) & set(_FIXED))
    if fixed:
        raise StudyError(
            f"{where}: {', '.join(fixed)} follow from `data` and the tokenizer; select a "
            "tokenizer (`tokenizer:`) instead"
        )
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

    def __init__(self, config: dict, prefix: str, root: Path | None = None) -> None:
        self.config = config
        self.prefix = prefix
        self.root = root
        self.train = _train_settings(config, prefix)
        sampling = config["sampling"]
        self.metric_settings = {
            "extractor": config["evaluation"]["extractor"],
            "reference": config["evaluation"]["reference"],
            "num_per_class": sampling["num_per_class"],
            "num_classes": config["data"]["num_classes"],
            "seed": sampling["seed"],
        }
        self.datasets: dict[str, DataSet] = {}
        self.configs: dict[str, TrainConfig] = {}
        self.evaluations: dict[str, Evaluation] = {}
        self.sweeps: dict[str, Sweep] = {}

    def metrics(self, merged: dict) -> dict:
        """The metric settings of a row (or an official checkpoint): the study's, with its
        table's `evaluation:` keys and, where it or its table sets one, its
        `sampling.chunk_size` (`chunk_size_of`; outside the ids, `_identity`)."""
        out = {**self.metric_settings, **merged.get("evaluation", {})}
        chunk = merged.get("sampling", {}).get("chunk_size")
        if chunk is not None:
            out["chunk_size"] = chunk
        return out

    def dataset(self, crop: str, tok: dict, where: str) -> str:
        name = _dataset_name(self.config, crop, tok)
        known = self.datasets.setdefault(name, DataSet(name, crop, tok, self._folder(name)))
        if known.tokenizer != tok:
            raise StudyError(
                f"{where}: tokenizer {tok['name']!r} at grid {tok['grid']} with settings other "
                f"than another table's ({known.tokenizer}); one name and grid, one tokenizer"
            )
        return known.folder

    def _folder(self, name: str) -> str:
        """`data_dir(name)`, shared by every study; but a data set this study finished in its
        own folder (`<prefix>/data/<name>`, where studies other than the paper's kept them
        before they were shared) stays there: its path is part of its runs' ids, so moving it
        would orphan every finished run."""
        own = f"{self.prefix}/data/{name}"
        if own != data_dir(name) and self.root and (self.root / own / "manifest.json").is_file():
            return own
        return data_dir(name)

    def run(self, overrides: dict, crop: str, tok: dict, where: str) -> TrainConfig:
        train = {**self.train, **_tokenizer_fixed(tok), "data": self.dataset(crop, tok, where)}
        cfg = _row_config(train, overrides, where)
        self.configs.setdefault(cfg.run_id(), cfg)
        return cfg

    def sweep(self, run: str, sampling: dict, checkpoint: str | None, metrics: dict) -> str | None:
        """The sweep that picks `sampling`'s guidance scale (None: no sweep)."""
        if "guidance_scales" not in sampling:
            return None
        base = {k: v for k, v in sampling.items() if k != "guidance_scales"}
        metrics = {**metrics, "num_per_class": self.config["sampling"]["sweep_per_class"]}
        scales = tuple(sampling["guidance_scales"])
        key = {"checkpoint": checkpoint} if checkpoint else {"run": run}
        sid = short_hash({**key, "scales": scales, "sampling": base, **_identity(metrics)})
        self.sweeps[sid] = Sweep(sid, run, scales, base, metrics, checkpoint)
        return sid

    def floor(self, images: str, metrics: dict, tokenizer: dict | None = None) -> str:
        """The FLOOR evaluation: the real images of `images` scored as samples; or, with a
        `tokenizer` (the table's), those images through it and back (kind "reconstructed")."""
        kind = "real" if tokenizer is None else "reconstructed"
        metrics = _identity(metrics)  # nothing is drawn
        key = {kind: images, **metrics}
        if tokenizer is not None:
            key["tokenizer"] = tokenizer
        eid = short_hash(key)
        self.evaluations[eid] = Evaluation(
            eid, "", 0.0, True, {}, metrics, kind=kind, images=images, tokenizer=tokenizer
        )
        return eid

    def ceiling(self, run: str, sampling: dict, metrics: dict) -> str:
        """The CEILING evaluation: samples of run `run`'s initial weights with its table's
        sampling; a swept scale is replaced by the lowest of the sweep (guidance cannot help a
        model that learned nothing, and a sweep of it would cost samples for no answer).
        Keyed by the run's trunk key: runs that differ only in their annealing start from the
        same weights, so their tables share one ceiling."""
        sampling = dict(sampling)
        if "guidance_scales" in sampling:
            sampling["guidance_scale"] = min(sampling.pop("guidance_scales"))
        start = self.configs[run].trunk_key()
        eid = short_hash({"untrained": start, "sampling": sampling, **_identity(metrics)})
        checkpoint = f"{self.prefix}/untrained/{run}.pt"
        evaluation = Evaluation(
            eid, run, 0.0, False, sampling, metrics, checkpoint, kind="untrained"
        )
        self.evaluations.setdefault(eid, evaluation)
        return eid

    def evaluation(
        self,
        run: str,
        epoch: float,
        final: bool,
        sampling: dict,
        metrics: dict,
        checkpoint: str | None = None,
    ) -> str:
        sweep = self.sweep(run, sampling, checkpoint, metrics)
        key = {"checkpoint": checkpoint} if checkpoint else {"run": run, "epoch": epoch}
        eid = short_hash({**key, "sampling": sampling, **_identity(metrics)})
        self.evaluations[eid] = Evaluation(
            eid, run, epoch, final, sampling, metrics, checkpoint, sweep
        )
        return eid


def chunk_size_of(config: dict, metrics: dict) -> int:
    """The images per chunk of a sample set with metric settings `metrics` (an Evaluation's or
    a Sweep's): its table's or row's `sampling.chunk_size`, else the study's."""
    return metrics.get("chunk_size", config["sampling"]["chunk_size"])


def load_study(config: Any, *, source: str = "config", root: str | Path | None = None) -> Study:
    """Resolve a study config into data sets, runs, evaluations, sweeps, tables and trunks.

    The one loader of every tool: the schema's checks and defaults first (`validate_config`),
    then the package's. Every error is a StudyError naming `source`, the key and the value.
    `root`: the folder the study's results/ is under; given, the trunk plan reads what each
    trunk has done there (`rar.experiments.records.run_on_disk`), as every tool that plans
    work must (the Snakefile, `rar plan`, `rar status`); None plans as if nothing had run.
    """
    config = validate_config(config, source=source)
    try:
        study = _build(config, None if root is None else Path(root))
    except StudyError as err:
        raise StudyError(f"{source}: {err}") from None
    study.source = source
    return study


def _build(config: dict, root: Path | None) -> Study:
    study_name = config["study"]
    prefix = "results" if study_name == "paper" else f"results/{study_name}"
    b = _Builder(config, prefix, root)
    study_sampling = {k: v for k, v in config["sampling"].items() if k in SAMPLING_KEYS}
    tables: dict[str, list[Row]] = {}
    references: dict[str, list[Row]] = {}
    curves: dict[str, list[tuple[str, float, dict, dict]]] = {}
    _row_config({**b.train, "data": ""}, {}, "train")  # the study-wide keys, checked early
    _check_reference_rows(config)

    for tname, table in config["tables"].items():
        tables[tname], curves[tname] = _table_rows(b, tname, table, study_sampling)
        if config["evaluation"]["reference_rows"]:
            references[tname] = _reference_rows(b, tname, tables[tname])

    official = config["official"]
    if official:
        tables["official"], curves["official"] = [], []
        for name, spec in official.items():
            where = f"official.{name}"
            sampling = _sampling_settings(_merge(study_sampling, spec["sampling"]), where)
            key = f"official_{name}"
            eid = b.evaluation(
                key, 0.0, True, sampling, b.metrics(spec), checkpoint=spec["checkpoint"]
            )
            tables["official"].append(
                Row("official", name, {"model": name}, key, eid, spec["paper"])
            )

    def on_disk(rid: str, epochs: float) -> RunOnDisk:
        return run_on_disk(root / prefix / "runs" / rid, epochs)

    runs = plan_trunks(
        b.configs,
        {(r, e) for rows in curves.values() for r, e, _, _ in rows},
        keep_every=config["trunks"]["keep_every"],
        on_disk=None if root is None else on_disk,
    )
    curve_ids = {
        t: [b.evaluation(r, e, False, s, m) for r, e, s, m in rows] for t, rows in curves.items()
    }
    parts = (b.datasets, runs, b.evaluations, b.sweeps, tables, curve_ids, references)
    return Study(study_name, prefix, config, *parts, root=root)


def _table_rows(
    b: _Builder, tname: str, table: dict, study_sampling: dict
) -> tuple[list[Row], list[tuple[str, float, dict, dict]]]:
    """A table's rows, and the (run, epoch, sampling, metrics) of its curve's evaluations."""
    config, base, rows = b.config, table["base"], table["rows"]
    # The table's columns: the keys its rows set, in order of first appearance.
    varying = list(dict.fromkeys(k for r in rows for k in r if k not in _NOT_COLUMNS))
    out, curve, seen = [], [], {}
    for i, row in enumerate(rows):
        where = f"tables.{tname}.rows[{i}]"
        merged = _merge(base, row)
        sampling = _sampling_settings(_merge(study_sampling, merged.get("sampling", {})), where)
        overrides = {k: v for k, v in merged.items() if k not in _ROW_META}
        crop = merged.get("crop", config["data"]["crop"])
        cfg = b.run(overrides, crop, _tokenizer_of(config, merged, where), where)
        rid, metrics = cfg.run_id(), b.metrics(merged)
        eid = b.evaluation(rid, cfg.epochs, True, sampling, metrics)
        if eid in seen:
            raise StudyError(
                f"{where}: the same run and evaluation as tables.{tname}.rows[{seen[eid]}] "
                "(a duplicate row)"
            )
        seen[eid] = i
        keys = {k: _column_value(k, row, base, cfg) for k in varying}
        label = row.get("label") or _label(keys)
        out.append(Row(tname, label, keys, rid, eid, dict(row.get("paper", {}))))
        for epoch in table["evaluate_epochs"]:
            if 0 < epoch < cfg.epochs:
                curve.append((rid, float(epoch), sampling, metrics))
    return out, curve


def _reference_rows(b: _Builder, tname: str, rows: list[Row]) -> list[Row]:
    """FLOOR, RECONSTRUCTED (through the first row's tokenizer) and CEILING (the first row's
    run untrained), scored as the first row is."""
    first = b.evaluations[rows[0].evaluation]
    floor_images = image_dir(b.config, b.prefix, "floor")
    tokenizer = b.datasets[Path(b.configs[first.run].data).name].tokenizer
    floor = b.floor(floor_images, first.metrics)
    tokens = b.floor(floor_images, first.metrics, tokenizer)
    ceiling = b.ceiling(first.run, first.sampling, first.metrics)
    return [
        Row(tname, FLOOR, {}, "", floor, kind="reference"),
        Row(tname, RECONSTRUCTED, {}, "", tokens, kind="reference"),
        Row(tname, CEILING, {}, first.run, ceiling, kind="reference"),
    ]


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


def load_study_file(path, root: str | Path | None = None) -> Study:
    """`load_study` of a YAML file (`root` as there); every problem (missing file, bad YAML,
    bad study) is a StudyError that names the file."""
    import yaml

    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as err:
        raise StudyError(f"{path}: {err}") from err
    return load_study(config, source=str(path), root=root)
