"""The pieces of a study and the files they live in: data sets, runs, sweeps, evaluations,
table rows, and `Study`, which answers every path and total the tools ask for. Torch-free.

`Study` keeps its answers as methods (paths, the training plan's totals, what a table's report
is made of) because each one is a question about the same resolved tables; how the study is
built from a config is `rar.experiments.build`, what each rule passes on is
`rar.experiments.rules`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rar.experiments.data_sets import (
    DATA_ROOT,
    DataSource,
    SourceRecord,
    data_dir,
    image_dir,
    record_sources,
    source_clashes,
)
from rar.experiments.records import (
    FAILURE_FILE,
    METRICS_CSV,
    NOTHING,
    RunOnDisk,
    checkpoint_name,
    run_on_disk,
)
from rar.experiments.results import GUIDANCE_JSON, METRICS_JSON
from rar.settings.training import TrainConfig

PAPER_SAMPLES = 50_000  # 50 per ImageNet class, as the paper's FIDs
# The reference rows of a table (`evaluation.reference_rows`): real held-out images scored
# like samples (the floor: what a perfect generator reaches at that sample count) and samples
# of a run's initial weights (the ceiling: what a generator that learned nothing reaches).
# A third, between them: the floor's images through the tokenizer and back, the best a generator
# in its token space can reach.
FLOOR, CEILING = "real held-out images", "untrained model"
RECONSTRUCTED = "tokenizer reconstructions"
EVALUATION_KINDS = ("model", "real", "reconstructed", "untrained")


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
    name: str  # folder name: <dataset>-<tokenizer>[-<grid>x<grid>]-<crop>
    crop: str
    tokenizer: dict = field(default_factory=dict, hash=False)  # the resolved `tokenizer:`
    folder: str = ""  # where it lives: data_dir(name), or this study's own (build._folder)


@dataclass(frozen=True)
class Run:
    id: str
    config: TrainConfig
    kind: str  # "scratch" | "trunk" | "branch"
    trunk: str | None = None  # branch: the trunk's run id
    branch_epoch: float | None = None  # branch: the trunk epoch it starts from
    segments: tuple[float, ...] = ()  # trunk: the epochs where its training jobs end
    until: float | None = None  # a trunk no table row needs: where its last job ends
    note: str | None = None  # why the plan trains it so, when a config edit changed that

    @property
    def end_epoch(self) -> float:
        """The epoch its last training job ends at."""
        return self.config.epochs if self.until is None else self.until

    @property
    def epochs_to_train(self) -> float:
        return self.end_epoch - (self.branch_epoch or 0)


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
    tokenizer: dict | None = field(default=None, hash=False)  # "reconstructed": encoded by it

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
    source: str = "config"  # the config file it was read from, for messages
    root: Path | None = None  # the folder results/ is under, when the plan read the disk

    def __post_init__(self) -> None:
        if self.prefix == DATA_ROOT:
            raise StudyError(f"study: {self.name!r} names {DATA_ROOT}/, every study's data sets")

    # -- paths (ARCHITECTURE.md, "Data flow") -----------------------------------------------

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
        """A data set's folder: `results/data/<name>`, whatever the study (`data_dir`), unless
        the study finished it in a folder of its own before data sets were shared."""
        known = self.datasets.get(dataset)
        return known.folder if known and known.folder else data_dir(dataset)

    def tokenizer_file(self, tok: dict | None = None) -> str:
        """A tokenizer's weights (default the study's `tokenizer:`): trained by the pipeline
        (the demo's) or the released file."""
        tok = tok or self.config["tokenizer"]
        return f"{self.prefix}/tokenizer/{tok['name']}.pt" if "train" in tok else tok["weights"]

    def data_source(self, dataset: str) -> SourceRecord:
        """What this study makes data set `dataset` from, as its `source.json` records it."""
        data = self.datasets[dataset]
        source = DataSource(
            images=self.image_dir("train"),
            heldout=self.image_dir("heldout"),
            tokenizer=dict(data.tokenizer),
            tokenizer_file=self.tokenizer_file(data.tokenizer),
            crop=data.crop,
            images_per_part=self.config["data"]["images_per_part"],
        )
        return SourceRecord(source, self.name, self.source)

    def data_clashes(self, root: str | Path | None = None) -> list[str]:
        """The study's data sets under `root` (default: the study's) whose `source.json`
        records another source than this study's (`source_clashes`): nothing may train on
        them for this study (the workflow refuses to start; `rar plan` and `rar status` say so)."""
        root = self.root if root is None else Path(root)
        return [] if root is None else source_clashes(self._data_sources(), root)

    def record_data_sources(self) -> None:
        """Record the sources of the study's data sets that have none yet (the workflow,
        before its first job): the first study to make a data set claims its name."""
        if self.root is not None:
            record_sources(self._data_sources(), self.root)

    def _data_sources(self) -> dict[str, SourceRecord]:
        return {self.data_dir(name): self.data_source(name) for name in self.datasets}

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
            return f"{self.run_dir(run)}/checkpoints/{checkpoint_name()}"
        if r.kind == "branch" and epoch <= r.branch_epoch:
            return self.checkpoint(r.trunk, epoch)
        return f"{self.run_dir(run)}/checkpoints/{checkpoint_name(epoch)}"

    def on_disk(self, run: str) -> RunOnDisk:
        """What run `run`'s folder shows (nothing when the study was loaded without a root)."""
        if self.root is None:
            return NOTHING
        return run_on_disk(self.root / self.run_dir(run), self.runs[run].config.epochs)

    def misfiled_runs(self) -> list[str]:
        """Run folders under the root whose config.yaml is another run's (a folder moved or
        renamed by hand, or a config edited in place): one line each. A workflow that trusted
        them would build on the wrong weights; nothing reads them while this is non-empty."""
        out = []
        for rid in self.runs if self.root is not None else ():
            path = self.root / self.run_dir(rid) / "config.yaml"
            if not path.is_file():
                continue
            try:
                found = TrainConfig.load(path).run_id()
            except (OSError, ValueError) as err:
                out.append(f"{path}: unreadable ({err})")
                continue
            if found != rid:
                out.append(f"{path}: the settings of run {found}, in the folder of run {rid}")
        return out

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
            rate = self.run_gpu_hours_per_epoch(run.id, rates)
            if rate is None:
                return None
            epochs = (epochs_by_run or {}).get(run.id, run.epochs_to_train)
            total += rate * epochs
        return total

    def run_gpu_hours_per_epoch(self, run: str, rates: dict) -> float | None:
        """A run's GPU-hours per epoch: its size's rate (`gpu_hours_per_epoch`, at the study
        tokenizer's tokens and codebook) times the ratio of its training FLOPs at its own
        (`GeneratorShape.forward_flops`: a table's tokenizer, e.g. ImageNet-512's 1,024
        tokens, ~4.3 x for adaLN). None without a rate."""
        cfg, tok = self.runs[run].config, self.config["tokenizer"]
        if cfg.model not in rates:
            return None
        tokens = {"num_tokens": tok["grid"] ** 2, "codebook_size": tok["codebook_size"]}
        at_study = replace(cfg.shape, **tokens).forward_flops
        return rates[cfg.model][0] * cfg.shape.forward_flops / at_study

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
            failures = [f"{self.eval_dir(row.evaluation)}/{FAILURE_FILE}"]
            if ev.sweep:
                failures.append(f"{self.sweep_dir(ev.sweep)}/{FAILURE_FILE}")
            if row.run in self.runs and ev.kind == "model":
                failures.append(f"{self.run_dir(row.run)}/{FAILURE_FILE}")
            out.append(
                {
                    "label": row.label,
                    "keys": row.keys,
                    "run": row.run,
                    "evaluation": row.evaluation,
                    "paper": row.paper,
                    "kind": row.kind,
                    "failure": failures,
                    "sweep": f"{self.sweep_dir(ev.sweep)}/{GUIDANCE_JSON}" if ev.sweep else None,
                }
            )
        return out

    def rows_with_references(self, table: str) -> list[Row]:
        return self.tables[table] + self.references.get(table, [])

    def metrics_files(self, table: str) -> list[str]:
        return [
            f"{self.eval_dir(row.evaluation)}/{METRICS_JSON}"
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
            {"label": labels[run], "metrics_csv": f"{self.run_dir(run)}/{METRICS_CSV}"}
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
                "metrics": f"{self.eval_dir(e)}/{METRICS_JSON}",
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
