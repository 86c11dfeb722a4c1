# The study (tables -> data sets, runs, evaluations, sweeps, trunks) and the input functions of
# the rules, all answered by rar.experiments; rar.experiments.rules holds the files and
# arguments that the rules pass on. Torch-free (parsing the workflow imports rar.experiments).
from snakemake.logging import logger

from rar.experiments import StudyError, load_study
from rar.experiments.rules import RuleWiring, one_of
from rar.experiments.resources import missing_resources


# The one study loader of every tool (rar plan / status / report use the same): the schema's
# checks and defaults, then identities, then what is on disk under the working directory (a
# trunk's kept checkpoints). `config` stays Snakemake's; rules read `study.config` and write
# under `study.prefix` (results/, or results/<study>/ for the demo).
_source = ", ".join(map(str, workflow.overwrite_configfiles)) or "config/config.yaml"
try:
    study = load_study(config, source=_source, root=".")
except StudyError as err:
    raise WorkflowError(str(err)) from None
logger.info(f"study {study.name!r} from {_source}: outputs under {study.prefix}/")
# A run's folder is its identity: one that holds another run's settings is never built on.
if _misfiled := study.misfiled_runs():
    raise WorkflowError(
        "run folders that are not the run their name says; move them out of results/:\n  "
        + "\n  ".join(_misfiled)
    )

# A data set is shared by every study that names it (results/data/): one made from another
# source (source.json) is never trained on as this study's.
if _clashes := study.data_clashes():
    raise WorkflowError("data sets made from another source:\n  " + "\n  ".join(_clashes))

# Rules name `wiring.<function>` for their input files, arguments and resources.
wiring = RuleWiring(study)
wiring.write_report_recipes()  # each table's make-up, rewritten when an edit changes it


# Finished work is redone only when a user names it (docs/results.md): a heavy stage reruns
# when its output is missing or --forcerun / -R names it, never because a timestamp, the code,
# a parameter's spelling or .snakemake/'s records changed. Two halves: every input of a heavy
# stage is ancient(), and Snakemake's rerun triggers are `mtime` alone (profiles/default, the
# workflow profile Snakemake reads on every call); a run with any other trigger is refused
# before its first job (Snakemake sets the triggers after it has read the rules).
def _check_rerun_triggers():
    extra = sorted(t.name.lower() for t in workflow.rerun_triggers if t.name != "MTIME")
    if extra:
        raise WorkflowError(
            f"rerun triggers {', '.join(extra)} are on: a code change, a git pull or a moved "
            "results folder would then retrain and re-sample finished work. This workflow "
            "runs with --rerun-triggers mtime (profiles/default/config.yaml, read unless "
            "--workflow-profile names another); to redo a finished job, name it: --forcerun "
            "RULE or -R FILE."
        )


# Everything the study needs from outside, checked whole before any job (rar.experiments.resources): a dry
# run lists what is missing; a run that would tokenize, sample or score refuses to start, with
# every missing file in one message (a finished grid still rebuilds its tables without them).
# The missing files get a producer (data.smk's `missing_resource`), so that Snakemake builds
# the whole DAG instead of stopping at the first job whose input is missing.
_missing = missing_resources(study.config, root=".")
_NEEDS_RESOURCES = {
    "tokenize_part", "shards", "tokenize_val", "sweep_guidance", "sample", "reconstruct",
    "evaluate", "missing_resource",
}  # fmt: skip
if _missing:
    logger.warning(
        f"{_source}: missing before the grid can run ({len(_missing)}):\n  "
        + "\n  ".join(m.line for m in _missing)
    )


onstart:
    _check_rerun_triggers()
    _rules = {job.rule.name for job in workflow.dag.needrun_jobs()}
    if _missing and _rules & _NEEDS_RESOURCES:
        raise WorkflowError(
            f"{_source}: {len(_missing)} resource(s) missing (`rar plan` lists them too):\n  "
            + "\n  ".join(m.line for m in _missing)
        )
    study.record_data_sources()  # the first study to run claims its data sets' names

