# Sampling: a run's checkpoint -> num_per_class images per class (ADM .npz) + a grid; and the
# guidance sweeps that choose an evaluation's scale when the study lists several.


rule sweep_guidance:
    input:
        checkpoint=ancient(wiring.sweep_checkpoint),
        tokenizer=ancient(wiring.tokenizer_input),
        reference=ancient(wiring.reference_input),
    output:
        guidance=f"{study.prefix}/sweeps/{{sweep}}/guidance.json",
    params:
        args=wiring.sweep_args,
        reference=wiring.reference_param,
        cache=f"{study.prefix}/cache/features",
    log:
        f"logs/{study.name}/sweep/{{sweep}}.log",
    benchmark:
        f"benchmarks/{study.name}/sweep/{{sweep}}.tsv"
    threads: 1  # this process waits on its launcher job
    resources:
        launcher_jobs=1,
        # not a param: where a stage runs must not make Snakemake rerun it
        launcher=wiring.launcher_args("sample"),
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} rar sweep-guidance --checkpoint {input.checkpoint:q} "
        "--tokenizer {input.tokenizer:q} --out {output.guidance:q} "
        "--reference {params.reference:q} --cache-dir {params.cache:q} {params.args:q} "
        "{resources.launcher} > {log:q} 2>&1"


rule sample:
    input:
        trained=ancient(wiring.trained_checkpoint),
        tokenizer=ancient(wiring.tokenizer_input),
        guidance=ancient(wiring.sweep_result),
    output:
        samples=f"{study.prefix}/evals/{{evaluation}}/samples.npz",
        grid=f"{study.prefix}/evals/{{evaluation}}/grid.png",
    params:
        checkpoint=wiring.sample_checkpoint,
        args=wiring.sample_args,
    log:
        f"logs/{study.name}/sample/{{evaluation}}.log",
    benchmark:
        f"benchmarks/{study.name}/sample/{{evaluation}}.tsv"
    threads: 1  # this process waits on its launcher job
    resources:
        launcher_jobs=1,
        # not a param: where a stage runs must not make Snakemake rerun it
        launcher=wiring.launcher_args("sample"),
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} rar sample --checkpoint {params.checkpoint:q} "
        "--tokenizer {input.tokenizer:q} --out {output.samples:q} {params.args:q} "
        "{resources.launcher} > {log:q} 2>&1"


# The `tokenizer reconstructions` reference row: the floor's real images encoded and decoded.
rule reconstruct:
    input:
        images=ancient(wiring.image_marker()),
        tokenizer=ancient(wiring.tokenizer_input),
    output:
        samples=f"{study.prefix}/reconstructions/{{evaluation}}.npz",
    params:
        images=wiring.reconstruction_images,
        grid=wiring.tokenizer_grid,
    log:
        f"logs/{study.name}/reconstruct/{{evaluation}}.log",
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} rar reconstruct --images {params.images:q} "
        "--tokenizer {input.tokenizer:q} --grid {params.grid} --out {output.samples:q} "
        "> {log:q} 2>&1"
