# Evaluation: samples (or the FLOOR row's real images) -> FID with its interval, IS, precision,
# recall (torch-fidelity), class_accuracy and val_nll (metrics.json).


rule evaluate:
    input:
        samples=ancient(inputs.evaluation_input),
        reference=ancient(inputs.reference_input()),
        heldout=ancient(inputs.evaluation_heldout),  # val_nll's held-out tokens
        probe=ancient(inputs.probe_input()),
    output:
        metrics=f"{P}/evals/{{evaluation}}/metrics.json",
    params:
        samples=inputs.evaluation_samples,
        extractor=C["evaluation"]["extractor"],
        reference=inputs.reference_param,
        weights=inputs.extractor_flags("--weights"),
        cache=f"{P}/cache/features",
        args=inputs.evaluate_args,
    log:
        f"logs/{study.name}/evaluate/{{evaluation}}.log",
    benchmark:
        f"benchmarks/{study.name}/evaluate/{{evaluation}}.tsv"
    threads: 1
    resources:
        launcher_jobs=1,
        # not a param: where a stage runs must not make Snakemake rerun it
        launcher=inputs.launcher_args("evaluate"),
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} rar evaluate --samples {params.samples:q} "
        "--reference {params.reference:q} --extractor {params.extractor:q} {params.weights:q} "
        "--cache-dir {params.cache:q} --out {output.metrics:q} {params.args:q} "
        "{resources.launcher} > {log:q} 2>&1"
