"""The paper's tables: one row per table row of the config, our metrics beside the paper's,
written as CSV, Markdown and HTML; and Table 5 from the throughput benchmarks.

A table is assembled first (`assemble_table`: read every row's files into one DataFrame), then
written (`write_table`), so that `rar report` can choose where a table goes once it knows
whether every row has metrics (`make_table_or_partial`), while the workflow's rule writes
where it is told (`make_table`). The same assembled table gives the same bytes either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rar.files import atomic_write_text
from rar.report.columns import (
    ID_COLUMNS,
    METRIC_KEYS,
    PAPER_COLUMNS,
    PAPER_METRICS,
    PLAIN_KEYS,
    RESULT_COLUMNS,
    ROW_KINDS,
    PathLike,
    fmt_cell,
    is_true,
)
from rar.report.html_page import markdown_html
from rar.report.intervals import beyond_best
from rar.report.markdown import table_markdown
from rar.report.read import guidance_cells, read_failure, read_metrics, read_val_nll, row_status

PAGES = ("csv", "md", "html")  # the files of one table
# Table 5: the paper says fp32; the official sampler (sample_imagenet_rar.py) runs fp32 weights
# with TF32 matrix products: rar bench-sample's `tf32`, the paper's setting. Its figures stand
# beside both, the tf32 rows marked.
PAPER_THROUGHPUT_DTYPES = ("fp32", "tf32")
PAPER_THROUGHPUT_SETTING = "tf32"
NO_DECODER = "none"  # rar bench-sample's decoder when it times the tokens only


@dataclass
class Table:
    """One assembled table: its name (`table2`), its rows (`df`, in the config's order), its
    key columns, and per row the reasons its metrics are not comparable to the paper's."""

    name: str
    df: pd.DataFrame
    key_cols: list[str]
    reasons: list[list[str]]

    def markdown(self) -> str:
        return table_markdown(
            self.df, table=self.name, key_cols=self.key_cols, reasons=self.reasons
        )

    def n_ok(self) -> int:
        """How many rows have metrics."""
        return int(self.df["status"].str.startswith("ok").sum())


def make_table(
    *,
    table: str,
    rows: list[dict],
    metrics: list,
    csv: PathLike,
    md: PathLike | None = None,
    html: PathLike | None = None,
) -> pd.DataFrame:
    """Assemble one paper table from its rows' metrics.json files (`assemble_table`); write
    `csv` (and `md`, and `html`: the Markdown page rendered, for the HTML report)."""
    t = assemble_table(table=table, rows=rows, metrics=metrics)
    write_table(t, csv=csv, md=md, html=html)
    print(f"{table}: {len(t.df)} rows, {t.n_ok()} with metrics -> {csv}", flush=True)
    return t.df


def make_table_or_partial(
    *, table: str, rows: list[dict], metrics: list, folder: PathLike
) -> pd.DataFrame:
    """`rar report`'s table: `folder/<table>.csv`, `.md` and `.html` when every row has
    metrics (the bytes the workflow's rule writes), else `<table>.partial.*`, the finished
    table left as it was, so a look in the middle of a long grid never replaces it. A complete
    table removes the partial files of an earlier look. One line printed names what was
    written (`make_table`'s line would name a partial file that a complete table is not)."""
    t = assemble_table(table=table, rows=rows, metrics=metrics)
    folder = Path(folder)
    final = {ext: folder / f"{table}.{ext}" for ext in PAGES}
    partial = {ext: folder / f"{table}.partial.{ext}" for ext in PAGES}
    missing = len(t.df) - t.n_ok()
    if missing:
        write_table(t, **partial)
        print(
            f"{table}: {missing} of {len(t.df)} rows without metrics: written to "
            f"{partial['csv']} (and .md, .html); {final['csv']} is left as it was",
            flush=True,
        )
        return t.df
    write_table(t, **final)
    for path in partial.values():
        path.unlink(missing_ok=True)
    print(f"{table}: complete -> {final['csv']} (and .md, .html)", flush=True)
    return t.df


def write_table(
    t: Table, *, csv: PathLike, md: PathLike | None = None, html: PathLike | None = None
) -> None:
    """Write `t` as CSV, and as Markdown and its HTML page where asked; each file atomically."""
    atomic_write_text(csv, t.df.to_csv(index=False))
    if md is not None or html is not None:
        text = t.markdown()
        if md is not None:
            atomic_write_text(md, text)
        if html is not None:
            atomic_write_text(html, markdown_html(text, title=t.name))


# ##########################################################################################
# Assembling a table from its rows' files
# ##########################################################################################


def assemble_table(*, table: str, rows: list[dict], metrics: list) -> Table:
    """One paper table from its rows' metrics.json files, every row kept, in order.

    table: the table's name (`table2`), the Markdown title.
    rows: per row {"label", "keys": {column: value}, "run", "evaluation", "paper": {"fid",
        "is", "precision", "recall"} (any subset), "failure": failure file(s) or None,
        "sweep": guidance.json or None, "kind": "row" (default) or "reference", "val_nll":
        a file with the row's held-out NLL (`read_val_nll`) or None}. Reference rows (the
        labels FLOOR and CEILING: real held-out images and an untrained model, scored like
        samples) have no keys, are never the best row, and sit after the table's rows.
    metrics: per row, the path of its metrics.json (it may not exist yet).
    Columns: the key columns (in `keys` order), RESULT_COLUMNS, paper_<m> and <m>_diff (ours
    - paper) for each metric, then kind, run, evaluation, label.
    `beyond_best`: whether the row's FID interval does not overlap the best row's.
    """
    if len(rows) != len(metrics):
        raise ValueError(f"{table}: {len(rows)} rows but {len(metrics)} metrics files")
    key_cols = list(dict.fromkeys(k for row in rows for k in row.get("keys", {})))
    clash = set(key_cols) & set(RESULT_COLUMNS + PAPER_COLUMNS + ID_COLUMNS)
    if clash:
        raise ValueError(f"{table}: key columns {sorted(clash)} clash with result columns")
    records, reasons = [], []
    for row, path in zip(rows, metrics, strict=True):
        rec, why = _row_record(table, row, path, key_cols)
        records.append(rec)
        reasons.append(why)
    df = _typed_frame(records, key_cols)
    df["beyond_best"] = beyond_best(df).astype("boolean")
    return Table(table, df, key_cols, reasons)


def _row_record(
    table: str, row: dict, path: PathLike, key_cols: list[str]
) -> tuple[dict, list[str]]:
    """One row's cells (its keys, its metrics from `path`, held-out NLL, guidance, status,
    the paper's values and our difference from them, what identifies it), and the reasons its
    metrics are not comparable to the paper's."""
    kind = row.get("kind", "row")
    if kind not in ROW_KINDS:
        raise ValueError(f"{table}, row {row['label']!r}: kind {kind!r} not in {ROW_KINDS}")
    paper = dict(row.get("paper") or {})
    unknown = set(paper) - set(PAPER_METRICS)
    if unknown:
        raise ValueError(f"{table}, row {row['label']!r}: unknown paper metrics {unknown}")
    m = read_metrics(path)
    rec = {k: row.get("keys", {}).get(k) for k in key_cols}
    rec.update({c: (m or {}).get(c) for c in RESULT_COLUMNS})
    rec.update(read_val_nll(row.get("val_nll")) or {})
    rec.update(guidance_cells(m, row.get("sweep")))
    rec["status"] = row_status(m, read_failure(row.get("failure")))
    for name in PAPER_METRICS:
        ours, theirs = rec[name], paper.get(name)
        rec[f"paper_{name}"] = theirs
        # Rounded so that CSV diffs read 0.03, not 0.030000000000000027.
        both = ours is not None and theirs is not None
        rec[f"{name}_diff"] = round(ours - theirs, 6) if both else None
    rec.update(kind=kind, run=row.get("run"), evaluation=row.get("evaluation"), label=row["label"])
    return rec, (m or {}).get("reasons", [])


def _typed_frame(records: list[dict], key_cols: list[str]) -> pd.DataFrame:
    """The rows as a DataFrame in column order, each column with the dtype its CSV needs."""
    df = pd.DataFrame(records, columns=key_cols + RESULT_COLUMNS + PAPER_COLUMNS + ID_COLUMNS)
    # Nullable dtypes: a missing row must not turn the sample counts into floats (5000.0).
    df["n_samples"] = df["n_samples"].astype("Int64")
    for col in key_cols:  # reference rows have no keys: whole numbers must stay whole (0, not 0.0)
        known = df[col].dropna()
        if len(known) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer()
            for v in known
        ):
            df[col] = df[col].astype("Int64")
    df["comparable"] = df["comparable"].astype("boolean")
    numeric = [*METRIC_KEYS, *PLAIN_KEYS, "val_nll_ci_low", "val_nll_ci_high", *PAPER_COLUMNS]
    for col in numeric:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df


# ##########################################################################################
# Table 5: sampling throughput
# ##########################################################################################


def make_throughput_table(
    *, benchmarks: Sequence[PathLike], csv: PathLike, md: PathLike | None = None, paper=None
) -> pd.DataFrame:
    """RAR Table 5 from `rar bench-sample` CSVs (one row each): images/s and tokens/s per
    model and dtype, with the paper's images/s (one A100, tokenizer decoding included) beside
    our fp32 and tf32 rows where `paper` ({model: images/s}) gives it; `paper_setting` marks
    the tf32 rows, the official sampler's precision (the paper's "fp32": fp32 weights, TF32
    matrix products). The Markdown's caption says whether our rows include decoding, from
    their `decoder` column."""
    paper = paper or {}
    frames = [pd.read_csv(path) for path in benchmarks]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not df.empty:
        fp32 = df["dtype"].isin(PAPER_THROUGHPUT_DTYPES)
        df["paper_images_per_s"] = [
            paper.get(m) if f else None for m, f in zip(df["model"], fp32, strict=True)
        ]
        df["paper_images_per_s"] = pd.to_numeric(df["paper_images_per_s"]).astype(float)
        df["paper_setting"] = df["dtype"] == PAPER_THROUGHPUT_SETTING
    atomic_write_text(csv, df.to_csv(index=False))
    if md is not None:
        atomic_write_text(md, _throughput_markdown(df))
    return df


def _throughput_markdown(df: pd.DataFrame) -> str:
    decoding, per_row = _decoding(df)
    lines = [
        "# table5: sampling throughput",
        "",
        f"Images per second generated with the KV cache and classifier-free guidance: "
        f"{decoding}. RAR Table 5: one A100, fp32, batch 128, tokenizer decoding included; "
        "the paper's fp32 is the official sampler's: fp32 weights with TF32 matrix products, "
        "our `tf32` (marked *); `fp32` is full fp32. Measured on the machines named in the "
        "last column; compare only rows of the same machine.",
        "",
        "| model | dtype | batch |"
        + (" decoder |" if per_row else "")
        + " images/s | tokens/s | paper images/s | machine |",
        "| --- | --- | --- |" + (" --- |" if per_row else "") + " --- | --- | --- | --- |",
    ]
    for r in df.to_dict("records"):
        mark = "*" if is_true(r.get("paper_setting")) else ""
        decoder = f" {fmt_cell(r.get('decoder'))} |" if per_row else ""
        lines.append(
            f"| {r['model']} | {r['dtype']}{mark} | {r['batch_size']} |{decoder} "
            f"{r['images_per_s']:.2f} | {r['tokens_per_s']:,.0f} "
            f"| {fmt_cell(r.get('paper_images_per_s'), 1)} | {r['machine']} |"
        )
    return "\n".join(lines) + "\n"


def _decoding(df: pd.DataFrame) -> tuple[str, bool]:
    """Whether the rows' images/s include tokenizer decoding, as their `decoder` column (rar
    bench-sample) says, in words for the caption; and whether the rows differ in it (then the
    table shows a decoder column)."""
    decoders = df["decoder"].fillna(NO_DECODER).astype(str) if "decoder" in df else None
    if decoders is None or decoders.empty:
        return "tokenizer decoding not recorded (no decoder column in the benchmarks)", False
    if decoders.nunique() > 1:
        return (
            f"tokenizer decoding included where the decoder column names a tokenizer "
            f"(`{NO_DECODER}`: the tokens only)",
            True,
        )
    decoder = decoders.iat[0]
    if decoder == NO_DECODER:
        return f"the tokens only, no tokenizer decoding (decoder `{NO_DECODER}`)", False
    return f"tokenizer decoding included (decoder `{decoder}`)", False
