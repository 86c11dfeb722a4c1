# Training: one config per run, trunks in segments, branches from the trunk, scratch runs.
# The in-progress checkpoints/last.pt is never declared: Snakemake deletes the outputs of a
# failed job, and last.pt is what a rerun resumes from.


rule run_config:
    output:
        config=f"{P}/runs/{{run}}/config.yaml",
    params:
        config=run_config_dict,
    log:
        f"logs/{study.name}/run_config/{{run}}.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/write_run_config.py"


rule train_segment:
    input:
        config=rules.run_config.output.config,
        manifest=rules.shards.output.manifest,
        start=segment_start,
    output:
        checkpoint=f"{P}/runs/{{run}}/checkpoints/epoch_{{epoch}}.pt",
    params:
        workdir=subpath(input.config, parent=True),
        init=init_args,
    log:
        f"logs/{study.name}/train/{{run}}-epoch_{{epoch}}.log",
    benchmark:
        f"benchmarks/{study.name}/train/{{run}}-epoch_{{epoch}}.tsv"
    threads: 1  # this process waits on its launcher job
    resources:
        launcher_jobs=1,
        # not a param: where a stage runs must not make Snakemake rerun it
        launcher=launcher_args("train"),
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} rar train --config {input.config} --workdir {params.workdir} "
        "--until-epoch {wildcards.epoch} {params.init} {resources.launcher} > {log} 2>&1"


rule train:
    input:
        config=rules.run_config.output.config,
        manifest=rules.shards.output.manifest,
        start=train_start,
    output:
        checkpoint=f"{P}/runs/{{run}}/checkpoints/final.pt",
    params:
        workdir=subpath(input.config, parent=True),
        init=init_args,
    log:
        f"logs/{study.name}/train/{{run}}.log",
    benchmark:
        f"benchmarks/{study.name}/train/{{run}}.tsv"
    threads: 1  # this process waits on its launcher job
    resources:
        launcher_jobs=1,
        # not a param: where a stage runs must not make Snakemake rerun it
        launcher=launcher_args("train"),
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} rar train --config {input.config} --workdir {params.workdir} {params.init} {resources.launcher} > {log} 2>&1"
