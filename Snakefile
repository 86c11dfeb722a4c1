# rar-pipeline: the RAR paper's tables as one DAG (docs: ARCHITECTURE.md). An index only: the
# rules live in workflow/rules/, the logic in the `rar` package.
#   snakemake --profile slurm results/table2.csv      the paper's Table 2 on a SLURM cluster
#   snakemake --profile profiles/demo                 the offline demo (results/demo/)
#   snakemake --profile slurm --configfile my.yaml    your own study: my.yaml alone
from snakemake.utils import min_version

min_version("9.0")


# The study: config/config.yaml (the paper's), unless --configfile names one, which then is
# the whole study: a config of your own is never merged into the paper's (its tables would
# come back). --config entries (a profile's launcher) apply on top of either.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    run="[0-9a-f]{12}",
    evaluation="[0-9a-f]{12}",
    sweep="[0-9a-f]{12}",
    stop=r"final|epoch_[0-9]+(\.[0-9]+)?",
    dataset=one_of(study.datasets),
    table=one_of(study.tables),  # the config's tables only (not table5)
    job="[0-9]+",
    model="rar_[a-z]+",
    dtype="fp32|tf32|bf16",  # rar.ops.bench.SAMPLE_DTYPES (tf32: the official sampler's)


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/preflight.smk"


rule all:
    input:
        wiring.all_outputs(),
    default_target: True
