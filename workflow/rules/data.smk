# Data: images -> (demo: a tokenizer trained here) -> token shards in parallel parts -> verified,
# once per data set (dataset, tokenizer, crop) that a table's rows train on.


# The study's missing resources (common.smk), so that a dry run shows the whole DAG; it never
# runs: onstart refuses the run first, naming every missing file.
if any(m.file for m in _missing):

    rule missing_resource:
        output:
            [m.path for m in _missing if m.file],
        log:
            f"logs/{study.name}/missing_resource.log",
        conda:
            "../../environment.yml"
        shell:
            "echo 'missing resources: see the message above' > {log:q}; exit 1"

rule demo_images:
    output:
        dataset=f"{study.prefix}/images/dataset.json",
    params:
        out=subpath(output.dataset, parent=True),
        demo=study.config["data"].get("demo", {}),
    log:
        f"logs/{study.name}/demo_images.log",
    benchmark:
        f"benchmarks/{study.name}/demo_images.tsv"
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} rar make-demo-data {params.out:q} "
        "--num-classes {params.demo[num_classes]:q} "
        "--images-per-class {params.demo[images_per_class]:q} "
        "--val-per-class {params.demo[val_per_class]:q} "
        "--test-per-class {params.demo[test_per_class]:q} "
        "--crop-scale {params.demo[crop_scale]:q} "
        "--image-size {params.demo[image_size]:q} --seed {params.demo[seed]:q} > {log:q} 2>&1"


rule demo_tokenizer:
    input:
        dataset=ancient(rules.demo_images.output.dataset),
    output:
        tokenizer=f"{study.prefix}/tokenizer/{study.config['tokenizer']['name']}.pt",
        quality=f"{study.prefix}/tokenizer/quality.json",
    params:
        images=f"{study.prefix}/images/train",
        val=f"{study.prefix}/images/val",
        args=wiring.tokenizer_args() if "train" in study.config["tokenizer"] else [],
        image_size=study.config["data"].get("demo", {}).get("image_size", 32),
        codebook=study.config["tokenizer"]["codebook_size"],
    log:
        f"logs/{study.name}/demo_tokenizer.log",
    benchmark:
        f"benchmarks/{study.name}/demo_tokenizer.tsv"
    threads: workflow.cores
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} rar train-tokenizer --images {params.images:q} "
        "--val-images {params.val:q} --out {output.tokenizer:q} --quality {output.quality:q} "
        "--image-size {params.image_size:q} --codebook-size {params.codebook:q} "
        "{params.args:q} > {log:q} 2>&1"


rule tokenize_part:
    input:
        images=ancient(wiring.image_marker()),
        tokenizer=ancient(wiring.tokenizer_input),
    output:
        done=touch(f"{study.data_dir('{dataset}')}/jobs/{{job}}.done"),
    params:
        grid=wiring.tokenizer_grid,
        images=wiring.image_dir(),
        out=subpath(output.done, ancestor=2),
        crop=wiring.dataset_crop,
        per_part=study.config["data"]["images_per_part"],
        jobs=study.config["data"]["tokenize_jobs"],
    log:
        f"logs/{study.name}/tokenize/{{dataset}}/{{job}}.log",
    benchmark:
        f"benchmarks/{study.name}/tokenize/{{dataset}}/{{job}}.tsv"
    resources:
        launcher_jobs=1,
        # not a param: where a stage runs must not make Snakemake rerun it
        launcher=wiring.launcher_args("tokenize"),
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} rar tokenize --images {params.images:q} --out {params.out:q} "
        "--tokenizer {input.tokenizer:q} --grid {params.grid} --crop {params.crop:q} "
        "--images-per-part {params.per_part:q} --job-index {wildcards.job:q} "
        "--num-jobs {params.jobs:q} --no-merge {resources.launcher} > {log:q} 2>&1"


rule shards:
    input:
        jobs=ancient(
            expand(
                f"{study.data_dir('{{dataset}}')}/jobs/{{job}}.done",
                job=range(study.config["data"]["tokenize_jobs"]),
            )
        ),
        tokenizer=ancient(wiring.tokenizer_input),
    output:
        manifest=f"{study.data_dir('{dataset}')}/manifest.json",
    params:
        grid=wiring.tokenizer_grid,
        images=wiring.image_dir(),
        out=subpath(output.manifest, parent=True),
        crop=wiring.dataset_crop,
        per_part=study.config["data"]["images_per_part"],
    log:
        f"logs/{study.name}/shards/{{dataset}}.log",
    benchmark:
        f"benchmarks/{study.name}/shards/{{dataset}}.tsv"
    conda:
        "../../environment.yml"
    shell:
        # Every part exists: this run only merges the manifest; then check every shard.
        "(OMP_NUM_THREADS={threads} rar tokenize --images {params.images:q} --out {params.out:q} "
        "--tokenizer {input.tokenizer:q} --grid {params.grid} --crop {params.crop:q} "
        "--images-per-part {params.per_part:q} && rar verify-shards {params.out:q}) > {log:q} 2>&1"


# The held-out split (docs/operating.md "Watching a grid"), once per data set: the demo's val/ images or
# ImageNet's validation split, center-cropped as the FID references, into <data set>/val/.
# Training logs its NLL every `val_every` epochs; nothing trains on it.
rule tokenize_val:
    input:
        images=ancient(wiring.image_marker()),
        tokenizer=ancient(wiring.tokenizer_input),
    output:
        manifest=f"{study.data_dir('{dataset}')}/val/manifest.json",
    params:
        grid=wiring.tokenizer_grid,
        images=wiring.heldout_image_dir(),
        out=subpath(output.manifest, parent=True),
        per_part=study.config["data"]["images_per_part"],
    log:
        f"logs/{study.name}/tokenize_val/{{dataset}}.log",
    benchmark:
        f"benchmarks/{study.name}/tokenize_val/{{dataset}}.tsv"
    resources:
        launcher_jobs=1,
        # not a param: where a stage runs must not make Snakemake rerun it
        launcher=wiring.launcher_args("tokenize"),
    conda:
        "../../environment.yml"
    shell:
        "(OMP_NUM_THREADS={threads} rar tokenize --images {params.images:q} "
        "--out {params.out:q} --tokenizer {input.tokenizer:q} --grid {params.grid} --crop center "
        "--images-per-part {params.per_part:q} {resources.launcher} "
        "&& rar verify-shards {params.out:q}) > {log:q} 2>&1"
