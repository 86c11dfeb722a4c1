# Training: one config per run; one rule for every training job: a trunk's segments (stop =
# epoch_<E>, each continuing from the previous one), a branch from its trunk's checkpoint, a
# run from scratch (stop = final). The in-progress checkpoints/last.pt is never declared:
# Snakemake deletes the outputs of a failed job, and last.pt is what a rerun resumes from.


rule run_config:
    output:
        config=f"{study.prefix}/runs/{{run}}/config.yaml",
    params:
        config=wiring.run_config_dict,
    log:
        f"logs/{study.name}/run_config/{{run}}.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/write_run_config.py"


# The CEILING row's checkpoint: a run's initial weights (rar.sampling.reference_rows), never trained.
rule untrained_checkpoint:
    input:
        config=ancient(wiring.untrained_run_config),
    output:
        checkpoint=f"{study.prefix}/untrained/{{run}}.pt",
    log:
        f"logs/{study.name}/untrained/{{run}}.log",
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} rar init-checkpoint --config {input.config:q} "
        "--out {output.checkpoint:q} > {log:q} 2>&1"


rule train:
    input:
        config=ancient(rules.run_config.output.config),
        manifest=ancient(wiring.manifest_of_run),
        heldout=ancient(wiring.heldout_of_run),  # for val_every (rar train reads <data>/val)
        start=ancient(wiring.train_start),
    output:
        checkpoint=f"{study.prefix}/runs/{{run}}/checkpoints/{{stop}}.pt",
    params:
        workdir=subpath(input.config, parent=True),
        args=wiring.train_args,
    log:
        f"logs/{study.name}/train/{{run}}-{{stop}}.log",
    benchmark:
        f"benchmarks/{study.name}/train/{{run}}-{{stop}}.tsv"
    threads: 1  # this process waits on its launcher job
    resources:
        launcher_jobs=1,
        # not a param: where a stage runs must not make Snakemake rerun it
        launcher=wiring.launcher_args("train"),
        # not a param either: the checkpoints a run keeps and its logging may change while it
        # is in flight (a new FID-vs-epoch point) without retraining it
        settings=wiring.train_settings,
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} rar train --config {input.config:q} "
        "--workdir {params.workdir:q} {params.args:q} {resources.settings} "
        "{resources.launcher} > {log:q} 2>&1"
