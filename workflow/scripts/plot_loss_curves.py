# rule loss_curves: training loss and the randomness r of a table's runs (rar.report).
import contextlib

from rar.report import plot_loss_curves

with open(snakemake.log[0], "w") as log, contextlib.redirect_stderr(log):
    plot_loss_curves(
        runs=snakemake.params.runs,
        out=snakemake.output.png,
        title=f"{snakemake.wildcards.table}: training loss and randomness r",
    )
