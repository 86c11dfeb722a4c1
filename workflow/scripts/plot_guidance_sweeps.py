# rule guidance_sweeps: FID against the guidance scale for each row of a table (rar.report).
import contextlib

from rar.report import plot_guidance_sweeps

with open(snakemake.log[0], "w") as log, contextlib.redirect_stderr(log):
    plot_guidance_sweeps(points=snakemake.params.points, out=snakemake.output.png)
