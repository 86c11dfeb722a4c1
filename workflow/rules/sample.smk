# Sampling: a run's checkpoint -> num_per_class images per class (ADM .npz) + a grid.


rule sample:
    input:
        trained=trained_checkpoint,
        tokenizer=tokenizer_file(),
    output:
        samples=f"{P}/evals/{{evaluation}}/samples.npz",
        grid=f"{P}/evals/{{evaluation}}/grid.png",
    params:
        checkpoint=sample_checkpoint,
        args=sample_args,
    log:
        f"logs/{study.name}/sample/{{evaluation}}.log",
    benchmark:
        f"benchmarks/{study.name}/sample/{{evaluation}}.tsv"
    threads: 1  # this process waits on its launcher job
    resources:
        launcher_jobs=1,
        # not a param: where a stage runs must not make Snakemake rerun it
        launcher=launcher_args("sample"),
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} rar sample --checkpoint {params.checkpoint} --tokenizer {input.tokenizer} "
        "--out {output.samples} {params.args} {resources.launcher} > {log} 2>&1"
