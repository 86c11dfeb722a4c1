# rule sample_grids: the sample grid of every row of a table, labelled (rar.report).
import contextlib

from rar.report import plot_sample_grids

with open(snakemake.log[0], "w") as log, contextlib.redirect_stderr(log):
    plot_sample_grids(grids=snakemake.params.grids, out=snakemake.output.png)
