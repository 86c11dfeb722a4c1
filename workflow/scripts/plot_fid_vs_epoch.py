# rule fid_vs_epoch: FID of intermediate checkpoints against their epoch (rar.report).
import contextlib

from rar.report import plot_fid_vs_epoch

with open(snakemake.log[0], "w") as log, contextlib.redirect_stderr(log):
    plot_fid_vs_epoch(points=snakemake.params.points, out=snakemake.output.png)
