"""`rar report`: metrics.json files -> the paper's tables (CSV, Markdown, HTML) and plots (PNG).

The last stage of ARCHITECTURE.md's data flow. Each function exported here is what one ~10-line
`workflow/scripts/*.py` calls, so the scripts hold no logic:

- `make_table`: one row per table row of the config, our metrics beside the paper's, every row
  kept: a row whose evaluation has not produced `metrics.json` shows as `missing`, or as
  `failed: <reason>` when a `failure.txt` says why (a `--keep-going` run must not hide a hole).
  Each FID carries its 95% bootstrap interval (rar.evaluation.scorer), and the rows whose interval
  lies beyond the best row's are marked: the rest cannot be told apart from it at this sample
  count. Reference rows (`kind: "reference"`: real held-out images, the floor; an untrained
  model, the ceiling) are scored the same way and placed under the table, and a table of the
  annealing grid ends with `anneal_verdict`, the paper's question answered from the numbers.
  `make_table_or_partial` is `rar report`'s: a table with holes goes to `<table>.partial.*`;
- `plot_anneal_heatmap` (RAR Table 2), `plot_metric_bars` (Tables 3 and 4: points with their
  intervals), `plot_scan_orders` (the appendix figure of the six scan orders),
  `plot_loss_curves` (small multiples), `plot_fid_vs_epoch`, `plot_guidance_sweeps`,
  `plot_sample_grids` (a grid of panels beside real images of the same classes);
- `make_throughput_table`: RAR Table 5 from the sampling benchmarks.

Metrics computed with the offline demo's `efficientnet-lite0` extractor land in the same
`fid`/`is`/... columns (so one table layout and one set of plots serve both studies), but the
`extractor` column, the Markdown caption and every plot label say so: they are not Inception
FIDs. Torch-free at import time: only `plot_scan_orders` imports torch (through rar.model.orders).

The modules, each importing only those above it (no cycle):
  columns     what each column is: metrics.json keys, names, decimals, directions, intervals
  read        metrics.json, held-out NLL, failure files, training logs, sweeps -> row cells
  intervals   table rows and reference rows, the best row, which rows differ beyond it
  captions    the caption paragraphs and the annealing verdict sentence
  markdown    a table's Markdown page;  html_page  that page as HTML
  tables      assembling a table and writing its files; Table 5
  figures     what the plots share;  table_plots  heatmaps and points with intervals
  curves      loss curves, FID over training and over guidance;  grids  scan orders, samples
"""

from rar.report.captions import anneal_verdict
from rar.report.columns import (
    DECIMALS,
    EXTRACTOR_SUFFIXES,
    INTERVALS,
    LOWER_IS_BETTER,
    METRIC_KEYS,
    METRIC_NAMES,
    PAPER_COLUMNS,
    PLAIN_KEYS,
    RESULT_COLUMNS,
    axis_label,
    extractor_suffix,
    interval_decimals,
    metric_label,
)
from rar.report.curves import plot_fid_vs_epoch, plot_guidance_sweeps, plot_loss_curves
from rar.report.grids import plot_sample_grids, plot_scan_orders
from rar.report.html_page import markdown_html
from rar.report.intervals import best_index, beyond_best, gap_closed
from rar.report.read import read_failure, read_metrics, read_train_log, read_val_nll
from rar.report.table_plots import anneal_grid, plot_anneal_heatmap, plot_metric_bars
from rar.report.tables import make_table, make_table_or_partial, make_throughput_table

__all__ = [
    "DECIMALS",
    "EXTRACTOR_SUFFIXES",
    "INTERVALS",
    "LOWER_IS_BETTER",
    "METRIC_KEYS",
    "METRIC_NAMES",
    "PAPER_COLUMNS",
    "PLAIN_KEYS",
    "RESULT_COLUMNS",
    "anneal_grid",
    "anneal_verdict",
    "axis_label",
    "best_index",
    "beyond_best",
    "extractor_suffix",
    "gap_closed",
    "interval_decimals",
    "make_table",
    "make_table_or_partial",
    "make_throughput_table",
    "markdown_html",
    "metric_label",
    "plot_anneal_heatmap",
    "plot_fid_vs_epoch",
    "plot_guidance_sweeps",
    "plot_loss_curves",
    "plot_metric_bars",
    "plot_sample_grids",
    "plot_scan_orders",
    "read_failure",
    "read_metrics",
    "read_train_log",
    "read_val_nll",
]
