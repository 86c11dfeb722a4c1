# The study (tables -> data sets, runs, evaluations, sweeps, trunks) and the input functions of
# the rules, all answered by rar.experiments; rar.experiments.rules holds the files and
# arguments that the rules pass on. Torch-free (parsing the workflow imports rar.experiments).
from rar.experiments import StudyError, load_study
from rar.experiments.rules import RuleInputs, one_of


# The one study loader of every tool (rar plan / status / report use the same): the schema's
# checks and defaults, then identities. `config` stays Snakemake's; rules read `C`.
try:
    study = load_study(config, source="config (--configfile / profile)")
except StudyError as err:
    raise WorkflowError(str(err)) from None

C = study.config
P = study.prefix  # results/ (paper) or results/<study>/ (the demo)
# Rules name `inputs.<function>` for their input files and arguments.
inputs = RuleInputs(study)


def heldout_of_run(wildcards):
    """A run's held-out tokens, ancient: validation never changes a run, so new held-out tokens
    retrain nothing."""
    manifest = inputs.heldout_of_run(wildcards)
    return ancient(manifest) if manifest else []


# The names workflow/rules/report.smk uses.
launcher_args = inputs.launcher_args
image_marker = inputs.image_marker
image_dir = inputs.image_dir
table_metrics = inputs.table_metrics
table_sweeps = inputs.table_sweeps
table_rows = inputs.table_rows
table_plot_kind = inputs.table_plot_kind
table_checkpoints = inputs.table_checkpoints
table_training_logs = inputs.table_training_logs
table_grids = inputs.table_grids
table_grid_labels = inputs.table_grid_labels
table_sweep_points = inputs.table_sweep_points
curve_points = inputs.curve_points
curve_metrics = inputs.curve_metrics
throughput_benchmarks = inputs.throughput_benchmarks
all_outputs = inputs.all_outputs
