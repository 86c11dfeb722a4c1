# Preflight: the whole grid rehearsed at toy scale through the same profile (rar preflight):
# every file the config names checked, every stage run once, one requeue forced, throughput
# measured for `rar plan`. Not part of `all`; ask for it by name:
#   snakemake --profile slurm results/preflight/report.md
# A failed check fails this job, and Snakemake deletes a failed job's outputs: the report's
# lines are also in the log, and <out>/checks.json stays.


rule preflight:
    output:
        report=f"{study.prefix}/preflight/report.md",
    params:
        study=wiring.study_json(),
        out=subpath(output.report, parent=True),
    log:
        f"logs/{study.name}/preflight.log",
    benchmark:
        f"benchmarks/{study.name}/preflight.tsv"
    threads: 1  # this process waits on its launcher jobs
    resources:
        launcher_jobs=1,
    conda:
        "../../environment.yml"
    shell:
        "rar preflight --config-json {params.study:q} --out {params.out:q} > {log:q} 2>&1"
