# rule sample_grids: every row's sample grid, labelled, beside real images (rar.report).
import contextlib

from rar.report import plot_sample_grids

with open(snakemake.log[0], "w") as log, contextlib.redirect_stderr(log):
    plot_sample_grids(
        grids=snakemake.params.grids, out=snakemake.output.png, real=snakemake.params.real
    )
