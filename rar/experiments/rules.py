"""What each rule of `workflow/rules/` passes on: its input files and its command's arguments,
answered from a `Study`. Torch-free and Snakemake-free.

`RuleWiring` is called the way Snakemake calls input and params functions (`wildcards`, and
`input` for params that need it), so a rule names `wiring.train_start` and the rule files
hold no study logic; a test calls the same method with a namespace for `wildcards`. The
Snakemake-only parts stay in `common.smk`: the `ancient` flag and the `WorkflowError`.

Quoting: every value put on a command line is quoted by the rule (`{x:q}`; a list quotes each
element), and argument lists are built here as lists, never as one string, so a config value
is always one literal argument and never shell syntax.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from typing import Any

from rar.experiments.build import chunk_size_of
from rar.experiments.results import GUIDANCE_JSON
from rar.experiments.study import Evaluation, Study, Sweep
from rar.settings.options import option_flags
from rar.settings.stages import SampleSettings, SamplingConfig
from rar.settings.training import OUTSIDE_IDENTITY


class RuleWiring:
    """The input and params functions of the workflow's rules, for one study."""

    def __init__(self, study: Study) -> None:
        self.study = study
        self.config = study.config
        self.prefix = study.prefix

    # -- where a stage runs ------------------------------------------------------------------

    def launcher_args(self, stage: str) -> str:
        """Where a heavy stage runs (rar.ops.launch): the backend from the profile, and the stage's
        resources from `<launcher_dir>/<stage>.yaml` when the profile names such a folder. A
        resource must be a string, so this one is quoted here."""
        args = ["--launcher", self.config["launcher"]]
        if self.config["launcher_dir"]:
            args += ["--launcher-config", f"{self.config['launcher_dir']}/{stage}.yaml"]
        return shlex.join(args)

    # -- data --------------------------------------------------------------------------------

    def image_dir(self) -> str:
        """Where the training images are: the demo makes its own, the paper's are linked."""
        return self.study.image_dir("train")

    def heldout_image_dir(self) -> str:
        return self.study.image_dir("heldout")

    def image_marker(self) -> str | list:
        """A file that exists once the image folder is complete (the demo's dataset.json)."""
        return f"{self.prefix}/images/dataset.json" if self.study.is_demo() else []

    def tokenizer_file(self, tok: dict | None = None) -> str:
        """A tokenizer's weights (default the study's): trained by the pipeline (demo) or the
        released file."""
        return self.study.tokenizer_file(tok)

    def tokenizer(self, wildcards) -> dict:
        """The tokenizer of a job: its data set's (`dataset`), its run's (`run`, or a sweep's
        or an evaluation's run), a reconstruction's own (its table's); the study's for a
        released checkpoint's samples."""
        if hasattr(wildcards, "dataset"):
            return self.study.datasets[wildcards.dataset].tokenizer
        if hasattr(wildcards, "sweep"):
            return self._tokenizer_of_run(self.sweep(wildcards).run)
        ev = self.evaluation(wildcards)
        return ev.tokenizer if ev.kind == "reconstructed" else self._tokenizer_of_run(ev.run)

    def _tokenizer_of_run(self, run: str) -> dict:
        if run not in self.study.runs:  # a released checkpoint
            return self.config["tokenizer"]
        return self.study.datasets[self.study.dataset_of(run)].tokenizer

    def tokenizer_input(self, wildcards) -> str:
        """The weights file of the job's tokenizer (`tokenizer`)."""
        return self.tokenizer_file(self.tokenizer(wildcards))

    def tokenizer_grid(self, wildcards) -> int:
        """The token grid of the job's tokenizer (`rar tokenize` / `rar reconstruct --grid`)."""
        return self.tokenizer(wildcards)["grid"]

    def tokenizer_args(self) -> list:
        """`rar train-tokenizer`'s flags from the config's tokenizer.train: --downsample, then
        each key that is a field of TokenizerTraining under its flag."""
        from rar.settings.stages import TokenizerTraining

        train = self.config["tokenizer"]["train"]
        return ["--downsample", train["downsample"], *option_flags(TokenizerTraining, train)]

    def dataset_crop(self, wildcards) -> str:
        return self.study.datasets[wildcards.dataset].crop

    def manifest_of_run(self, wildcards) -> str:
        return f"{self.study.data_dir(self.study.dataset_of(wildcards.run))}/manifest.json"

    def heldout_of_run(self, wildcards) -> str | list:
        """The held-out tokens a run validates on (train: val_every > 0), made by
        tokenize_val; [] when it does not validate or names its own."""
        cfg = self.study.runs[wildcards.run].config
        if cfg.val_every <= 0 or cfg.val_data:
            return []
        return f"{self.study.data_dir(self.study.dataset_of(wildcards.run))}/val/manifest.json"

    # -- training ----------------------------------------------------------------------------

    def run_config_dict(self, wildcards) -> dict:
        """A run's file: the settings of its identity only. The rest (OUTSIDE_IDENTITY: the
        checkpoints it keeps, logging) reaches each training job as `--settings`, a resource,
        so that editing them neither rewrites this file nor makes Snakemake retrain."""
        config = self.study.runs[wildcards.run].config.to_dict()
        return {k: v for k, v in config.items() if k not in OUTSIDE_IDENTITY}

    def train_settings(self, wildcards) -> str:
        config = self.study.runs[wildcards.run].config.to_dict()
        settings = {k: v for k, v in config.items() if k in OUTSIDE_IDENTITY}
        return shlex.join(["--settings", json.dumps(settings, sort_keys=True)])

    def stop_epoch(self, wildcards) -> float:
        """The epoch a training job ends at: a named checkpoint's, or the run's last."""
        if wildcards.stop == "final":
            return self.study.runs[wildcards.run].config.epochs
        return float(wildcards.stop.removeprefix("epoch_"))

    def train_start(self, wildcards) -> str | list:
        """The checkpoint a training job continues from: a trunk's previous segment, a branch's
        trunk checkpoint at its anneal start, or nothing (from scratch)."""
        run = self.study.runs[wildcards.run]
        epoch = self.stop_epoch(wildcards)
        if run.kind == "trunk":
            earlier = [s for s in run.segments if s < epoch]
            return self.study.checkpoint(run.id, max(earlier)) if earlier else []
        if run.kind == "branch":
            return self.study.checkpoint(run.trunk, run.branch_epoch)
        return []

    def train_args(self, wildcards, input) -> list:
        """`--until-epoch E` for a segment, `--init-from CKPT` when the job continues."""
        until = f"{self.stop_epoch(wildcards):g}"
        args = [] if wildcards.stop == "final" else ["--until-epoch", until]
        return args + (["--init-from", input.start] if input.start else [])

    def untrained_run_config(self, wildcards) -> str:
        """The config of the run whose initial weights a CEILING row samples."""
        return f"{self.study.run_dir(wildcards.run)}/config.yaml"

    # -- sampling and sweeps -----------------------------------------------------------------

    def evaluation(self, wildcards) -> Evaluation:
        return self.study.evaluations[wildcards.evaluation]

    def sweep(self, wildcards) -> Sweep:
        return self.study.sweeps[wildcards.sweep]

    def _checkpoint_of(self, run: str, epoch: float | None, checkpoint: str | None) -> str:
        """A released file, or our run's checkpoint at `epoch` (None: its final one)."""
        return checkpoint or self.study.checkpoint(run, epoch)

    def trained_checkpoint(self, wildcards) -> str:
        """The run's final checkpoint (intermediate ones exist once the run has finished), or
        the released checkpoint an official evaluation scores."""
        ev = self.evaluation(wildcards)
        return self._checkpoint_of(ev.run, None, ev.checkpoint)

    def sample_checkpoint(self, wildcards) -> str:
        ev = self.evaluation(wildcards)
        return self._checkpoint_of(ev.run, None if ev.final else ev.epoch, ev.checkpoint)

    def sweep_checkpoint(self, wildcards) -> str:
        s = self.sweep(wildcards)
        return self._checkpoint_of(s.run, None, s.checkpoint)

    def sweep_result(self, wildcards) -> str | list:
        """The guidance.json an evaluation takes its scale from ([] without a sweep)."""
        ev = self.evaluation(wildcards)
        return f"{self.study.sweep_dir(ev.sweep)}/{GUIDANCE_JSON}" if ev.sweep else []

    def _sampling_flags(self, sampling: dict, metrics: dict) -> list:
        """An evaluation's or sweep's resolved sampling (`rar.experiments.build`) as the flags
        of its SamplingConfig fields but the scale (`sample_args` and `sweep_args` give it
        their own way), then its chunk size (its table's, else the study's)."""
        shared = {k: v for k, v in sampling.items() if k != "guidance_scale"}
        chunk = {"chunk_size": chunk_size_of(self.config, metrics)}
        return [*option_flags(SamplingConfig, shared), *option_flags(SampleSettings, chunk)]

    def extractor_flags(self, flag: str) -> list:
        """`flag <weights>` when the config names the extractor's weights file."""
        weights = self.config["evaluation"]["weights"]
        return [flag, weights] if weights else []

    def _metric_flags(self, metrics: dict) -> list:
        """The sample count and seed a metric depends on, as SampleSettings' flags."""
        counts = {k: metrics[k] for k in ("num_per_class", "seed")}
        return option_flags(SampleSettings, counts)

    def sample_args(self, wildcards, input) -> list:
        ev = self.evaluation(wildcards)
        if input.guidance:
            scale = ["--guidance-scale-from", input.guidance]
        else:
            scale = option_flags(SamplingConfig, {"guidance_scale": ev.sampling["guidance_scale"]})
        # fail before sampling when the metric's extractor weights cannot be had
        check = option_flags(SampleSettings, {"check_extractor": ev.metrics["extractor"]})
        return [
            *scale,
            *self._sampling_flags(ev.sampling, ev.metrics),
            *self._metric_flags(ev.metrics),
            *check,
            *self.extractor_flags("--extractor-weights"),
        ]

    def sweep_args(self, wildcards) -> list:
        s = self.sweep(wildcards)
        return [
            "--scales",
            *s.scales,
            *self._sampling_flags(s.sampling, s.metrics),
            *self._metric_flags(s.metrics),
            "--extractor",
            s.metrics["extractor"],
            *self.extractor_flags("--weights"),
        ]

    def reconstruction_images(self, wildcards) -> str:
        return self.evaluation(wildcards).images

    # -- evaluation --------------------------------------------------------------------------

    def evaluation_samples(self, wildcards) -> str:
        return self.study.samples_of(wildcards.evaluation)

    def evaluation_input(self, wildcards) -> str | list:
        """The file whose existence means the samples are there (a folder's: its marker)."""
        if self.evaluation(wildcards).kind == "real":
            return self.image_marker()
        return self.study.samples_of(wildcards.evaluation)

    def evaluation_heldout(self, wildcards) -> str | list:
        """The held-out tokens of an evaluation's val_nll: its run's data set's val/ split ([]
        for real images, a released checkpoint, or `evaluation.val_nll: false`)."""
        ev = self.evaluation(wildcards)
        if not self.config["evaluation"]["val_nll"] or ev.run not in self.study.runs:
            return []
        return f"{self.study.data_dir(self.study.dataset_of(ev.run))}/val/manifest.json"

    def probe_input(self) -> str | list:
        """The images of the class probe's marker ([] without `evaluation.class_probe`)."""
        return self.image_marker() if self.config["evaluation"]["class_probe"] else []

    def evaluate_args(self, wildcards, input) -> list:
        args = ["--heldout", os.path.dirname(input.heldout)] if input.heldout else []
        if self.config["evaluation"]["class_probe"]:
            args += ["--probe-images", self.image_dir()]
        return args

    def _metrics(self, wildcards) -> dict:
        """The metric settings of a sweep's or an evaluation's job."""
        if hasattr(wildcards, "sweep"):
            return self.sweep(wildcards).metrics
        return self.evaluation(wildcards).metrics

    def reference_param(self, wildcards, input) -> str:
        """Real images to compare with: the ADM reference batch (paper; a table's own, e.g.
        ImageNet-512's), or the demo's held-out images (made with the training images, never
        trained on)."""
        if self._metrics(wildcards)["reference"]:
            return input.reference
        return f"{self.prefix}/images/val"

    def reference_input(self, wildcards) -> str | list:
        return self._metrics(wildcards)["reference"] or self.image_marker()

    # -- report and targets ------------------------------------------------------------------

    def report_recipe(self, wildcards) -> str:
        """What table `wildcards.table` and its plots are made of (`write_report_recipes`): an
        input of each of their rules, so that a config edit that changes a table's rows remakes
        the table and pulls in what its new rows need."""
        return self.recipe_file(wildcards.table)

    def recipe_file(self, table: str) -> str:
        return f"{self.prefix}/recipes/{table}.json"

    def write_report_recipes(self, root: str | os.PathLike = ".") -> None:
        """Write each table's recipe where it differs from the file on disk (its mtime then
        says when the table's make-up last changed). Snakemake reruns a heavy stage only when
        its output is missing (ancient inputs, `mtime` the only rerun trigger:
        profiles/default): without Snakemake's record of input sets, this file is how a table
        learns that its rows changed."""
        from rar.files import atomic_write_text

        for table in self.study.tables:
            recipe = {
                "rows": self.study.report_rows(table),
                "plot": self.study.plot_kind(table),
                "curve": self.study.curve_points(table),
                "logs": self.study.training_logs(table),
                "checkpoints": [self.study.checkpoint(r) for r in self.study.table_runs(table)],
                "grids": self.study.grids(table),
            }
            text = json.dumps(recipe, indent=1, sort_keys=True) + "\n"
            path = os.path.join(root, self.recipe_file(table))
            try:
                with open(path) as f:
                    if f.read() == text:
                        continue
            except OSError:
                pass
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write_text(path, text)

    def table_metrics(self, wildcards) -> list[str]:
        return self.study.metrics_files(wildcards.table)

    def table_sweeps(self, wildcards) -> list[str]:
        return [row["sweep"] for row in self.study.report_rows(wildcards.table) if row["sweep"]]

    def table_rows(self, wildcards) -> list[dict]:
        return self.study.report_rows(wildcards.table)

    def table_plot_kind(self, wildcards) -> dict:
        return self.study.plot_kind(wildcards.table)

    def table_checkpoints(self, wildcards) -> list[str]:
        return [self.study.checkpoint(run) for run in self.study.table_runs(wildcards.table)]

    def table_training_logs(self, wildcards) -> list[dict]:
        return self.study.training_logs(wildcards.table)

    def table_grids(self, wildcards) -> list[str]:
        return [grid["png"] for grid in self.study.grids(wildcards.table)]

    def table_grid_labels(self, wildcards) -> list[dict]:
        return self.study.grids(wildcards.table)

    def table_sweep_points(self, wildcards) -> list[dict]:
        return self.study.sweep_points(wildcards.table)

    def curve_points(self, wildcards) -> list[dict]:
        return self.study.curve_points(wildcards.table)

    def curve_metrics(self, wildcards) -> list[str]:
        return [point["metrics"] for point in self.curve_points(wildcards)]

    def throughput_benchmarks(self) -> list[str]:
        """Table 5's timings, one CSV per (model, dtype) of `throughput_table`."""
        bench = self.config.get("throughput_table")
        if not bench:
            return []
        p = self.prefix
        return [f"{p}/throughput/{m}_{d}.csv" for m in bench["models"] for d in bench["dtypes"]]

    def all_outputs(self) -> list[str]:
        return self.study.outputs()

    # -- preflight ---------------------------------------------------------------------------

    def study_json(self) -> str:
        """The validated study as one JSON argument of `rar preflight --config-json` (quoted
        in the shell command, so that no config string is ever shell syntax); its `launcher`
        and `launcher_dir` keys are the profile's, so the preflight's jobs go where the
        grid's go."""
        return json.dumps(self.config, sort_keys=True)


def one_of(names: Any) -> str:
    """A wildcard constraint matching exactly these names."""
    return "|".join(re.escape(n) for n in names) or "(?!)"
