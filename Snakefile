# rar-pipeline: the RAR paper's tables as one DAG (DESIGN.md). An index only: the rules live in
# workflow/rules/, the logic in the `rar` package.
#   snakemake --profile slurm results/table2.csv      the paper's Table 2 on a SLURM cluster
#   snakemake --profile profiles/demo                 the offline demo (results/demo/)
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_outputs(),
    default_target: True
