# Helpers for the rules: the study (tables -> runs, evaluations, trunk plan) and the input
# functions. Torch-free: parsing the workflow imports only rar.experiments.
from snakemake.utils import validate

from rar.experiments import StudyError, load_study


validate(config, schema="../schemas/config.schema.yaml")
try:
    study = load_study(config)
except StudyError as err:
    raise WorkflowError(f"config: {err}") from None

P = study.prefix  # results/ (paper) or results/<study>/ (the demo)
DATA = study.data_dir


def launcher_args(stage):
    """Where a heavy stage runs (rar.launch): the backend from the profile, and the stage's
    resources from `<launcher_dir>/<stage>.yaml` when the profile names such a folder."""
    args = f"--launcher {config.get('launcher', 'debug')}"
    folder = config.get("launcher_dir")
    return args + (f" --launcher-config {folder}/{stage}.yaml" if folder else "")



wildcard_constraints:
    run="[0-9a-f]{12}",
    evaluation="[0-9a-f]{12}",
    epoch=r"[0-9]+(\.[0-9]+)?",
    table="|".join(study.tables) or "(?!)",  # the config's tables only (not table5)
    job="[0-9]+",
    model="rar_[a-z]+",
    dtype="fp32|bf16",


# -- data --------------------------------------------------------------------------------


def image_dir():
    """Where the training images are: the demo makes its own, the paper's are linked."""
    if "demo" in config["data"]:
        return f"{P}/images/train"
    return config["data"]["images"]


def image_marker():
    """A file that exists once the image folder is complete (the demo's dataset.json)."""
    return f"{P}/images/dataset.json" if "demo" in config["data"] else []


def tokenizer_file():
    """The tokenizer weights: trained by the pipeline (demo) or the released file."""
    tok = config["tokenizer"]
    return f"{P}/tokenizer/{tok['name']}.pt" if "train" in tok else tok["weights"]


# -- training ----------------------------------------------------------------------------


def run_config_dict(wildcards):
    return study.runs[wildcards.run].config.to_dict()


def segment_start(wildcards):
    """The checkpoint a trunk segment ending at `epoch` continues from ([] for the first)."""
    run = study.runs[wildcards.run]
    earlier = [s for s in run.segments if s < float(wildcards.epoch)]
    return study.checkpoint(run.id, max(earlier)) if earlier else []


def train_start(wildcards):
    """What a run's last training job starts from: a trunk's last segment, a branch's trunk
    checkpoint at its anneal start, or nothing (from scratch)."""
    run = study.runs[wildcards.run]
    if run.kind == "trunk" and run.segments:
        return study.checkpoint(run.id, run.segments[-1])
    if run.kind == "branch":
        return study.checkpoint(run.trunk, run.branch_epoch)
    return []


def init_args(wildcards, input):
    """`--init-from CKPT` when the job continues from a checkpoint (input `start`)."""
    return f"--init-from {input.start}" if input.start else ""


# -- sampling and evaluation ---------------------------------------------------------------


def evaluation(wildcards):
    return study.evaluations[wildcards.evaluation]


def trained_checkpoint(wildcards):
    """The run's final checkpoint (intermediate ones exist once the run has finished), or
    the released checkpoint an official evaluation scores."""
    ev = evaluation(wildcards)
    return ev.checkpoint or study.checkpoint(ev.run)


def sample_checkpoint(wildcards):
    ev = evaluation(wildcards)
    return ev.checkpoint or study.checkpoint(ev.run, None if ev.final else ev.epoch)


def sample_args(wildcards):
    ev = evaluation(wildcards)
    s = ev.sampling
    return (
        f"--guidance-scale {s['guidance_scale']} --guidance-power {s['guidance_power']} "
        f"--temperature {s['temperature']} --order {s['order']} "
        f"--num-per-class {ev.metrics['num_per_class']} --seed {ev.metrics['seed']} "
        f"--chunk-size {config['sampling'].get('chunk_size', 250)} "
        # fail before sampling when the metric's extractor weights cannot be had
        f"--check-extractor {ev.metrics['extractor']} {extractor_weights_args('--extractor-weights')}"
    )


def reference_param(wildcards, input):
    """Real images to compare with: the ADM reference batch (paper), or the demo's held-out
    images (made with the training images, never trained on)."""
    if config["evaluation"].get("reference"):
        return input.reference
    return f"{P}/images/val"


def reference_input():
    ref = config["evaluation"].get("reference")
    return ref if ref else image_marker()


def extractor_weights_args(flag="--weights"):
    weights = config["evaluation"].get("weights")
    return f"{flag} {weights}" if weights else ""


# -- targets -----------------------------------------------------------------------------


def table_metrics(wildcards):
    return study.metrics_files(wildcards.table)


def table_rows(wildcards):
    return study.report_rows(wildcards.table)


def table_plot_kind(wildcards):
    """A heatmap for an annealing grid (both anneal keys vary), else bars."""
    keys = study.tables[wildcards.table][0].keys
    if {"anneal_start", "anneal_end"} <= set(keys):
        return {"plot": "heatmap"}
    return {"plot": "bars", "key": next(iter(keys))}


def _table_runs(table):
    """The training runs of a table's rows (an official checkpoint has none)."""
    return list(dict.fromkeys(r.run for r in study.tables[table] if r.run in study.runs))


def table_checkpoints(wildcards):
    return [study.checkpoint(run) for run in _table_runs(wildcards.table)]


def table_training_logs(wildcards):
    labels = {}
    for row in study.tables[wildcards.table]:
        labels.setdefault(row.run, row.label)
    return [
        {"label": labels[run], "metrics_csv": f"{study.run_dir(run)}/metrics.csv"}
        for run in _table_runs(wildcards.table)
    ]


def table_grids(wildcards):
    return [f"{study.eval_dir(row.evaluation)}/grid.png" for row in study.tables[wildcards.table]]


def table_grid_labels(wildcards):
    return [
        {"label": row.label, "png": f"{study.eval_dir(row.evaluation)}/grid.png"}
        for row in study.tables[wildcards.table]
    ]


def curve_points(wildcards):
    """FID-vs-epoch points of a table: its intermediate evaluations, each curve ending with
    the run's final evaluation."""
    table = wildcards.table
    label = {row.run: row.label for row in reversed(study.tables[table])}
    evaluations = list(study.curve_evaluations[table])
    curve_runs = {study.evaluations[e].run for e in evaluations}
    evaluations += [row.evaluation for row in study.tables[table] if row.run in curve_runs]
    return [
        {
            "label": label[study.evaluations[e].run],
            "epoch": study.evaluations[e].epoch,
            "metrics": f"{study.eval_dir(e)}/metrics.json",
        }
        for e in dict.fromkeys(evaluations)
    ]


def curve_metrics(wildcards):
    return [point["metrics"] for point in curve_points(wildcards)]


def throughput_benchmarks():
    bench = config.get("throughput_table")
    if not bench:
        return []
    return [f"{P}/throughput/{m}_{d}.csv" for m in bench["models"] for d in bench["dtypes"]]


def all_outputs():
    """Every table (CSV and Markdown) with its plots, and the scan-order figure."""
    out = [f"{P}/plots/scan_orders.png"]
    if config.get("throughput_table"):
        out += [f"{P}/table5.csv", f"{P}/table5.md"]
    for table in study.tables:
        out += [f"{P}/{table}.csv", f"{P}/{table}.md"]
        plots = ("fid", "loss", "samples") if _table_runs(table) else ("fid", "samples")
        out += [f"{P}/plots/{table}_{kind}.png" for kind in plots]
        if study.curve_evaluations[table]:
            out.append(f"{P}/plots/{table}_fid_vs_epoch.png")
    return out
