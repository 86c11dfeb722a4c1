# rule scan_orders: the six scan orders of RAR Table 3 as numbered grids (rar.report).
import contextlib

from rar.report import plot_scan_orders

with open(snakemake.log[0], "w") as log, contextlib.redirect_stderr(log):
    plot_scan_orders(out=snakemake.output.png, grid=min(snakemake.params.grid, 8))
