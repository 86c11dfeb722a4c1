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
        launcher=launcher_args("sample"),
    log:
        f"logs/{study.name}/sample/{{evaluation}}.log",
    benchmark:
        f"benchmarks/{study.name}/sample/{{evaluation}}.tsv"
    threads: 1  # this process waits on its launcher job
    resources:
        launcher_jobs=1,
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} rar sample --checkpoint {params.checkpoint} --tokenizer {input.tokenizer} "
        "--out {output.samples} {params.args} {params.launcher} > {log} 2>&1"
