# rule table_plot: a table's FID as a heatmap over (anneal start, end) or as bars (rar.report).
import contextlib

from rar.report import plot_anneal_heatmap, plot_metric_bars

with open(snakemake.log[0], "w") as log, contextlib.redirect_stderr(log):
    kind = snakemake.params.kind
    if kind["plot"] == "heatmap":
        plot_anneal_heatmap(csv=snakemake.input.csv, out=snakemake.output.png)
    else:
        plot_metric_bars(csv=snakemake.input.csv, out=snakemake.output.png, key=kind["key"])
