# rule table5: rar bench-sample CSVs -> results/table5.csv and .md (RAR Table 5).
import contextlib

from rar.report import make_throughput_table

with open(snakemake.log[0], "w") as log, contextlib.redirect_stderr(log):
    make_throughput_table(
        benchmarks=list(snakemake.input.benchmarks),
        csv=snakemake.output.csv,
        md=snakemake.output.md,
        paper=dict(snakemake.params.paper),
    )
