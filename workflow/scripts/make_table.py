# rule table: metrics.json of every row -> results/<table>.csv, .md and .html (rar.report).
import contextlib

from rar.report import make_table

with open(snakemake.log[0], "w") as log, contextlib.redirect_stderr(log):
    make_table(
        table=snakemake.wildcards.table,
        rows=snakemake.params.rows,
        metrics=list(snakemake.input.metrics),
        csv=snakemake.output.csv,
        md=snakemake.output.md,
        html=snakemake.output.html,
    )
