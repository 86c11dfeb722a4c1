# Evaluation: samples -> FID, IS, precision, recall with torch-fidelity (metrics.json).


rule evaluate:
    input:
        samples=rules.sample.output.samples,
        reference=reference_input(),
    output:
        metrics=f"{P}/evals/{{evaluation}}/metrics.json",
    params:
        extractor=C["evaluation"]["extractor"],
        reference=reference_param,
        weights=_extractor_flags("--weights"),
        cache=f"{P}/cache/features",
    log:
        f"logs/{study.name}/evaluate/{{evaluation}}.log",
    benchmark:
        f"benchmarks/{study.name}/evaluate/{{evaluation}}.tsv"
    threads: 1
    resources:
        launcher_jobs=1,
        # not a param: where a stage runs must not make Snakemake rerun it
        launcher=launcher_args("evaluate"),
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} rar evaluate --samples {input.samples:q} "
        "--reference {params.reference:q} --extractor {params.extractor:q} {params.weights:q} "
        "--cache-dir {params.cache:q} --out {output.metrics:q} {resources.launcher} > {log:q} 2>&1"
