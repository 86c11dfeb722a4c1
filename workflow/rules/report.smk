# Report: metrics -> results/<table>.csv and .md, and the plots in results/plots/.


rule table:
    input:
        recipe=wiring.report_recipe,
        metrics=wiring.table_metrics,
        sweeps=wiring.table_sweeps,
    output:
        csv=f"{study.prefix}/{{table}}.csv",
        md=f"{study.prefix}/{{table}}.md",
        html=report(
            f"{study.prefix}/{{table}}.html",
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "{table}"},
        ),
    params:
        rows=wiring.table_rows,
    log:
        f"logs/{study.name}/table/{{table}}.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/make_table.py"


rule table_plot:
    input:
        csv=f"{study.prefix}/{{table}}.csv",
    output:
        png=report(
            f"{study.prefix}/plots/{{table}}_fid.png",
            caption="../report/table_plot.rst",
            category="Plots",
            labels={"table": "{table}", "plot": "FID"},
        ),
    params:
        kind=wiring.table_plot_kind,
    log:
        f"logs/{study.name}/table_plot/{{table}}.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/plot_table.py"


rule loss_curves:
    input:
        recipe=wiring.report_recipe,
        checkpoints=wiring.table_checkpoints,
    output:
        png=report(
            f"{study.prefix}/plots/{{table}}_loss.png",
            caption="../report/loss_curves.rst",
            category="Plots",
            labels={"table": "{table}", "plot": "training loss"},
        ),
    params:
        runs=wiring.table_training_logs,
    log:
        f"logs/{study.name}/loss_curves/{{table}}.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/plot_loss_curves.py"


rule sample_grids:
    input:
        recipe=wiring.report_recipe,
        grids=wiring.table_grids,
        real=wiring.image_marker(),
    output:
        png=report(
            f"{study.prefix}/plots/{{table}}_samples.png",
            caption="../report/sample_grids.rst",
            category="Plots",
            labels={"table": "{table}", "plot": "samples"},
        ),
    params:
        grids=wiring.table_grid_labels,
        real=wiring.image_dir(),  # real images of the same classes, beside the samples
    log:
        f"logs/{study.name}/sample_grids/{{table}}.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/plot_sample_grids.py"


rule fid_vs_epoch:
    input:
        recipe=wiring.report_recipe,
        metrics=wiring.curve_metrics,
    output:
        png=report(
            f"{study.prefix}/plots/{{table}}_fid_vs_epoch.png",
            caption="../report/fid_vs_epoch.rst",
            category="Plots",
            labels={"table": "{table}", "plot": "FID vs epoch"},
        ),
    params:
        points=wiring.curve_points,
    log:
        f"logs/{study.name}/fid_vs_epoch/{{table}}.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/plot_fid_vs_epoch.py"


rule guidance_sweeps:
    input:
        recipe=wiring.report_recipe,
        sweeps=wiring.table_sweeps,
    output:
        png=report(
            f"{study.prefix}/plots/{{table}}_guidance.png",
            caption="../report/guidance_sweeps.rst",
            category="Plots",
            labels={"table": "{table}", "plot": "guidance sweep"},
        ),
    params:
        points=wiring.table_sweep_points,
    log:
        f"logs/{study.name}/guidance_sweeps/{{table}}.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/plot_guidance_sweeps.py"


rule scan_orders:
    output:
        png=report(
            f"{study.prefix}/plots/scan_orders.png",
            caption="../report/scan_orders.rst",
            category="Plots",
            labels={"plot": "scan orders"},
        ),
    params:
        grid=study.config["tokenizer"]["grid"],  # the token grid the study's runs train on
    log:
        f"logs/{study.name}/scan_orders.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/plot_scan_orders.py"


rule bench_sample:
    output:
        csv=f"{study.prefix}/throughput/{{model}}_{{dtype}}.csv",
    params:
        bench=study.config.get("throughput_table", {}),
    log:
        f"logs/{study.name}/bench_sample/{{model}}_{{dtype}}.log",
    threads: workflow.cores  # a timing: nothing else should run beside it
    resources:
        launcher_jobs=1,
        # not a param: where a stage runs must not make Snakemake rerun it
        launcher=wiring.launcher_args("sample"),
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} rar bench-sample --model {wildcards.model:q} "
        "--dtype {wildcards.dtype:q} --batch-size {params.bench[batch_size]:q} "
        "--steps {params.bench[steps]:q} --csv {output.csv:q} {resources.launcher} > {log:q} 2>&1"


rule table5:
    input:
        benchmarks=wiring.throughput_benchmarks(),
    output:
        csv=report(
            f"{study.prefix}/table5.csv",
            caption="../report/table5.rst",
            category="Tables",
            labels={"table": "table5", "format": "csv"},
        ),
        md=f"{study.prefix}/table5.md",
    params:
        paper=study.config.get("throughput_table", {}).get("paper", {}),
    log:
        f"logs/{study.name}/table5.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/make_throughput_table.py"
