# rule scan_orders: the six scan orders of RAR Table 3 on the study's token grid (16 x 16 for
# the paper), as its supplementary Fig. 6 draws them (rar.report).
import contextlib

from rar.report import plot_scan_orders

with open(snakemake.log[0], "w") as log, contextlib.redirect_stderr(log):
    plot_scan_orders(out=snakemake.output.png, grid=snakemake.params.grid)
