# Evaluation: samples (or the FLOOR row's real images) -> FID with its interval, IS, precision,
# recall (torch-fidelity), class_accuracy and val_nll (metrics.json).


rule evaluate:
    input:
        samples=ancient(wiring.evaluation_input),
        reference=ancient(wiring.reference_input),
        heldout=ancient(wiring.evaluation_heldout),  # val_nll's held-out tokens
        probe=ancient(wiring.probe_input()),
    output:
        metrics=f"{study.prefix}/evals/{{evaluation}}/metrics.json",
    params:
        samples=wiring.evaluation_samples,
        extractor=study.config["evaluation"]["extractor"],
        reference=wiring.reference_param,
        weights=wiring.extractor_flags("--weights"),
        cache=f"{study.prefix}/cache/features",
        args=wiring.evaluate_args,
    log:
        f"logs/{study.name}/evaluate/{{evaluation}}.log",
    benchmark:
        f"benchmarks/{study.name}/evaluate/{{evaluation}}.tsv"
    threads: 1
    resources:
        launcher_jobs=1,
        # not a param: where a stage runs must not make Snakemake rerun it
        launcher=wiring.launcher_args("evaluate"),
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} rar evaluate --samples {params.samples:q} "
        "--reference {params.reference:q} --extractor {params.extractor:q} {params.weights:q} "
        "--cache-dir {params.cache:q} --out {output.metrics:q} {params.args:q} "
        "{resources.launcher} > {log:q} 2>&1"
