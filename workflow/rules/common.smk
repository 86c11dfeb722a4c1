# Helpers for the rules: the study (tables -> data sets, runs, evaluations, sweeps, trunks) and
# the input functions. Torch-free: parsing the workflow imports only rar.experiments.
#
# Quoting: every value put on a command line is quoted (`{x:q}`; a list quotes each
# element), and argument lists are built here as lists, never as one string, so a config
# value is always one literal argument and never shell syntax.
import json
import os
import re
import shlex

from rar.config import OUTSIDE_IDENTITY
from rar.experiments import StudyError, load_study


# The one study loader of every tool (rar plan / status / report use the same): the schema's
# checks and defaults, then identities. `config` stays Snakemake's; rules read `C`.
try:
    study = load_study(config, source="config (--configfile / profile)")
except StudyError as err:
    raise WorkflowError(str(err)) from None

C = study.config
P = study.prefix  # results/ (paper) or results/<study>/ (the demo)


def launcher_args(stage):
    """Where a heavy stage runs (rar.launch): the backend from the profile, and the stage's
    resources from `<launcher_dir>/<stage>.yaml` when the profile names such a folder. A
    resource must be a string, so this one is quoted here."""
    args = ["--launcher", C["launcher"]]
    if C["launcher_dir"]:
        args += ["--launcher-config", f"{C['launcher_dir']}/{stage}.yaml"]
    return shlex.join(args)


def one_of(names):
    """A wildcard constraint matching exactly these names."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


# -- data --------------------------------------------------------------------------------


def is_demo():
    return study.is_demo()


def image_dir():
    """Where the training images are: the demo makes its own, the paper's are linked."""
    return study.image_dir("train")


def image_marker():
    """A file that exists once the image folder is complete (the demo's dataset.json)."""
    return f"{P}/images/dataset.json" if is_demo() else []


def tokenizer_file():
    """The tokenizer weights: trained by the pipeline (demo) or the released file."""
    tok = C["tokenizer"]
    return f"{P}/tokenizer/{tok['name']}.pt" if "train" in tok else tok["weights"]


def dataset_crop(wildcards):
    return study.datasets[wildcards.dataset].crop


def manifest_of_run(wildcards):
    return f"{study.data_dir(study.dataset_of(wildcards.run))}/manifest.json"


def heldout_image_dir():
    return study.image_dir("heldout")


def heldout_of_run(wildcards):
    """The held-out tokens a run validates on (train: val_every > 0), made by tokenize_val;
    ancient: validation never changes a run, so new held-out tokens retrain nothing."""
    cfg = study.runs[wildcards.run].config
    if cfg.val_every <= 0 or cfg.val_data:
        return []
    return ancient(f"{study.data_dir(study.dataset_of(wildcards.run))}/val/manifest.json")


# -- training ----------------------------------------------------------------------------


def run_config_dict(wildcards):
    """A run's file: the settings of its identity only. The rest (OUTSIDE_IDENTITY: the
    checkpoints it keeps, logging) reaches each training job as `--settings`, a resource, so
    that editing them neither rewrites this file nor makes Snakemake retrain."""
    config = study.runs[wildcards.run].config.to_dict()
    return {k: v for k, v in config.items() if k not in OUTSIDE_IDENTITY}


def train_settings(wildcards):
    config = study.runs[wildcards.run].config.to_dict()
    settings = {k: v for k, v in config.items() if k in OUTSIDE_IDENTITY}
    return shlex.join(["--settings", json.dumps(settings, sort_keys=True)])


def stop_epoch(wildcards):
    """The epoch a training job ends at: a named checkpoint's, or the run's last."""
    if wildcards.stop == "final":
        return study.runs[wildcards.run].config.epochs
    return float(wildcards.stop.removeprefix("epoch_"))


def train_start(wildcards):
    """The checkpoint a training job continues from: a trunk's previous segment, a branch's
    trunk checkpoint at its anneal start, or nothing (from scratch)."""
    run = study.runs[wildcards.run]
    epoch = stop_epoch(wildcards)
    if run.kind == "trunk":
        earlier = [s for s in run.segments if s < epoch]
        return study.checkpoint(run.id, max(earlier)) if earlier else []
    if run.kind == "branch":
        return study.checkpoint(run.trunk, run.branch_epoch)
    return []


def train_args(wildcards, input):
    """`--until-epoch E` for a segment, `--init-from CKPT` when the job continues."""
    args = [] if wildcards.stop == "final" else ["--until-epoch", f"{stop_epoch(wildcards):g}"]
    return args + (["--init-from", input.start] if input.start else [])


# -- sampling, sweeps and evaluation ----------------------------------------------------------


def evaluation(wildcards):
    return study.evaluations[wildcards.evaluation]


def _checkpoint_of(run, epoch, checkpoint):
    """A released file, or our run's checkpoint at `epoch` (None: its final one)."""
    return checkpoint or study.checkpoint(run, epoch)


def trained_checkpoint(wildcards):
    """The run's final checkpoint (intermediate ones exist once the run has finished), or
    the released checkpoint an official evaluation scores."""
    ev = evaluation(wildcards)
    return _checkpoint_of(ev.run, None, ev.checkpoint)


def untrained_run_config(wildcards):
    """The config of the run whose initial weights a CEILING row samples."""
    return f"{study.run_dir(wildcards.run)}/config.yaml"


def sample_checkpoint(wildcards):
    ev = evaluation(wildcards)
    return _checkpoint_of(ev.run, None if ev.final else ev.epoch, ev.checkpoint)


def sweep_result(wildcards):
    """The guidance.json an evaluation takes its scale from ([] without a sweep)."""
    ev = evaluation(wildcards)
    return f"{study.sweep_dir(ev.sweep)}/guidance.json" if ev.sweep else []


def _sampling_flags(sampling):
    flags = ["--temperature", sampling["temperature"], "--order", sampling["order"]]
    flags += ["--guidance-schedule", sampling["guidance_schedule"]]
    if "guidance_power" in sampling:
        flags += ["--guidance-power", sampling["guidance_power"]]
    return flags + ["--chunk-size", C["sampling"]["chunk_size"]]


def _extractor_flags(flag):
    weights = C["evaluation"]["weights"]
    return [flag, weights] if weights else []


def sample_args(wildcards, input):
    ev = evaluation(wildcards)
    s = ev.sampling
    if input.guidance:
        scale = ["--guidance-scale-from", input.guidance]
    else:
        scale = ["--guidance-scale", s["guidance_scale"]]
    return [
        *scale,
        *_sampling_flags(s),
        "--num-per-class", ev.metrics["num_per_class"],
        "--seed", ev.metrics["seed"],
        # fail before sampling when the metric's extractor weights cannot be had
        "--check-extractor", ev.metrics["extractor"],
        *_extractor_flags("--extractor-weights"),
    ]  # fmt: skip


def sweep(wildcards):
    return study.sweeps[wildcards.sweep]


def sweep_checkpoint(wildcards):
    s = sweep(wildcards)
    return _checkpoint_of(s.run, None, s.checkpoint)


def sweep_args(wildcards):
    s = sweep(wildcards)
    return [
        "--scales", *s.scales,
        *_sampling_flags(s.sampling),
        "--num-per-class", s.metrics["num_per_class"],
        "--seed", s.metrics["seed"],
        "--extractor", s.metrics["extractor"],
        *_extractor_flags("--weights"),
    ]  # fmt: skip


def evaluation_samples(wildcards):
    return study.samples_of(wildcards.evaluation)


def evaluation_input(wildcards):
    """The file whose existence means the samples are there (a folder's: its marker)."""
    if evaluation(wildcards).kind == "real":
        return image_marker()
    return study.samples_of(wildcards.evaluation)


def reconstruction_images(wildcards):
    return evaluation(wildcards).images


def evaluation_heldout(wildcards):
    """The held-out tokens of an evaluation's val_nll: its run's data set's val/ split ([]
    for real images, a released checkpoint, or `evaluation.val_nll: false`)."""
    ev = evaluation(wildcards)
    if not C["evaluation"]["val_nll"] or ev.run not in study.runs:
        return []
    return f"{study.data_dir(study.dataset_of(ev.run))}/val/manifest.json"


def evaluate_args(wildcards, input):
    args = ["--heldout", os.path.dirname(input.heldout)] if input.heldout else []
    if C["evaluation"]["class_probe"]:
        args += ["--probe-images", image_dir()]
    return args


def reference_param(wildcards, input):
    """Real images to compare with: the ADM reference batch (paper), or the demo's held-out
    images (made with the training images, never trained on)."""
    return input.reference if C["evaluation"]["reference"] else f"{P}/images/val"


def reference_input():
    return C["evaluation"]["reference"] or image_marker()


# -- targets -----------------------------------------------------------------------------


def table_metrics(wildcards):
    return study.metrics_files(wildcards.table)


def table_sweeps(wildcards):
    return [row["sweep"] for row in study.report_rows(wildcards.table) if row["sweep"]]


def table_rows(wildcards):
    return study.report_rows(wildcards.table)


def table_plot_kind(wildcards):
    return study.plot_kind(wildcards.table)


def table_checkpoints(wildcards):
    return [study.checkpoint(run) for run in study.table_runs(wildcards.table)]


def table_training_logs(wildcards):
    return study.training_logs(wildcards.table)


def table_grids(wildcards):
    return [grid["png"] for grid in study.grids(wildcards.table)]


def table_grid_labels(wildcards):
    return study.grids(wildcards.table)


def table_sweep_points(wildcards):
    return study.sweep_points(wildcards.table)


def curve_points(wildcards):
    return study.curve_points(wildcards.table)


def curve_metrics(wildcards):
    return [point["metrics"] for point in curve_points(wildcards)]


def throughput_benchmarks():
    bench = C.get("throughput_table")
    if not bench:
        return []
    return [f"{P}/throughput/{m}_{d}.csv" for m in bench["models"] for d in bench["dtypes"]]


def all_outputs():
    return study.outputs()


# -- preflight ---------------------------------------------------------------------------


def study_json():
    """The validated study as one JSON argument of `rar preflight --config-json` (quoted in
    the shell command, so that no config string is ever shell syntax); its `launcher` and
    `launcher_dir` keys are the profile's, so the preflight's jobs go where the grid's go."""
    import json

    return json.dumps(C, sort_keys=True)
