# Data: images -> (demo: a tokenizer trained here) -> token shards in parallel parts -> verified.


rule demo_images:
    output:
        dataset=f"{P}/images/dataset.json",
    params:
        out=subpath(output.dataset, parent=True),
        demo=config["data"].get("demo", {}),
    log:
        f"logs/{study.name}/demo_images.log",
    benchmark:
        f"benchmarks/{study.name}/demo_images.tsv"
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} rar make-demo-data {params.out} --num-classes {params.demo[num_classes]} "
        "--images-per-class {params.demo[images_per_class]} "
        "--val-per-class {params.demo[val_per_class]} "
        "--image-size {params.demo[image_size]} --seed {params.demo[seed]} > {log} 2>&1"


rule demo_tokenizer:
    input:
        dataset=rules.demo_images.output.dataset,
    output:
        tokenizer=f"{P}/tokenizer/{config['tokenizer']['name']}.pt",
        quality=f"{P}/tokenizer/quality.json",
    params:
        images=f"{P}/images/train",
        val=f"{P}/images/val",
        train=config["tokenizer"].get("train", {}),
        image_size=config["data"].get("demo", {}).get("image_size", 32),
        codebook=config["tokenizer"]["codebook_size"],
    log:
        f"logs/{study.name}/demo_tokenizer.log",
    benchmark:
        f"benchmarks/{study.name}/demo_tokenizer.tsv"
    threads: workflow.cores
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} rar train-tokenizer --images {params.images} --val-images {params.val} "
        "--out {output.tokenizer} --quality {output.quality} "
        "--image-size {params.image_size} --codebook-size {params.codebook} "
        "--downsample {params.train[downsample]} --steps {params.train[steps]} "
        "--batch-size {params.train[batch_size]} --seed {params.train[seed]} > {log} 2>&1"


rule tokenize_part:
    input:
        images=image_marker(),
        tokenizer=tokenizer_file(),
    output:
        done=touch(f"{DATA}/jobs/{{job}}.done"),
    params:
        images=image_dir(),
        out=subpath(output.done, ancestor=2),
        data=config["data"],
        jobs=config["data"]["tokenize_jobs"],
    log:
        f"logs/{study.name}/tokenize/{{job}}.log",
    benchmark:
        f"benchmarks/{study.name}/tokenize/{{job}}.tsv"
    resources:
        launcher_jobs=1,
        # not a param: where a stage runs must not make Snakemake rerun it
        launcher=launcher_args("tokenize"),
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} rar tokenize --images {params.images} --out {params.out} --tokenizer {input.tokenizer} "
        "--crop {params.data[crop]} --images-per-part {params.data[images_per_part]} "
        "--job-index {wildcards.job} --num-jobs {params.jobs} --no-merge {resources.launcher} > {log} 2>&1"


rule shards:
    input:
        jobs=expand(f"{DATA}/jobs/{{job}}.done", job=range(config["data"]["tokenize_jobs"])),
        tokenizer=tokenizer_file(),
    output:
        manifest=f"{DATA}/manifest.json",
    params:
        images=image_dir(),
        out=subpath(output.manifest, parent=True),
        data=config["data"],
    log:
        f"logs/{study.name}/shards.log",
    benchmark:
        f"benchmarks/{study.name}/shards.tsv"
    conda:
        "../../environment.yml"
    shell:
        # Every part exists: this run only merges the manifest; then check every shard.
        "(OMP_NUM_THREADS={threads} rar tokenize --images {params.images} --out {params.out} --tokenizer {input.tokenizer} "
        "--crop {params.data[crop]} --images-per-part {params.data[images_per_part]} "
        "&& rar verify-shards {params.out}) > {log} 2>&1"
