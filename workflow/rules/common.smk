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

