"""What every plot shares: a figure, its atomic PNG, wrapped titles, and the small facts a
panel shows (a row's short status, the reference rows' values, which metrics get a panel).

Plots are drawn on `matplotlib.figure.Figure` objects, not pyplot, so no backend or global
figure state is involved and nothing needs closing.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd

from rar.files import atomic_open, atomic_write_bytes
from rar.report.columns import DECIMALS, PLOT_METRICS, PathLike, fmt_cell, known
from rar.report.intervals import reference_rows

DPI = 120
# How every figure marks a row sampled in random order (Table 2's random-only row).
RANDOM_ORDER = "sampled in random order"


def figure(width: float, height: float):
    """A figure of that many inches, laid out by matplotlib's constrained layout."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def grid_shape(n: int, max_cols: int) -> tuple[int, int]:
    """(rows, columns) for `n` panels, at most `max_cols` a line: one line when they fit,
    else as few lines as that allows, each as full as it can be (5 panels at 3 a line: 2 x 3,
    not 3 lines). Callers remove the cells left over (`drop_unused`)."""
    n = max(1, n)
    rows = -(-n // max_cols)
    return rows, -(-n // rows)


def drop_unused(fig, axes, used: int) -> None:
    """Remove the cells of a panel grid past the first `used`: no empty frame is drawn."""
    for ax in list(axes)[used:]:
        fig.delaxes(ax)


def save_png(fig, out: PathLike, *, palette: int | None = None, dpi: int = DPI) -> Path:
    """Write `fig` as a PNG atomically (a killed job leaves no half-written image).

    palette: store that many colours (median cut, no dithering) instead of full RGB, for
    figures full of photographs or of many antialiased lines, which otherwise make megabyte
    PNGs (and an HTML report of tens of MB)."""
    out = Path(out)
    if not palette:
        with atomic_open(out, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi)
    else:
        from PIL import Image

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        rgb = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        small = rgb.quantize(
            colors=palette, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
        buf = io.BytesIO()
        small.save(buf, format="PNG", optimize=True)
        atomic_write_bytes(out, buf.getvalue())
    print(f"wrote {out}", flush=True)
    return out


def chars_across(fig_or_ax, fontsize: float = 9) -> float:
    """How many characters of `fontsize` fit across a figure (or the figure of an axes): an
    average glyph is ~0.55 of the font size."""
    fig = getattr(fig_or_ax, "figure", None) or fig_or_ax
    return fig.get_figwidth() * 72 / (0.55 * fontsize)


def wrap_to(fig, text: str, fontsize: float) -> str:
    """`text` wrapped to the figure's width."""
    return textwrap.fill(text, max(20, int(chars_across(fig, fontsize) * 0.95)))


def empty_note(ax, text: str, **style) -> None:
    """`text` in the middle of an empty panel, in grey ("no training log yet")."""
    style = {"color": "0.4", **style}
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", **style)


def check_metric(metric: str) -> None:
    """Raise ValueError, naming the known metrics, unless `metric` is one a plot can draw."""
    if metric not in PLOT_METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(PLOT_METRICS)}")


def short_status(status: Any) -> str:
    """`failed: out of memory` -> `failed` (a cell or bar has no room for the reason)."""
    return str(status).split(":")[0].split(" (")[0] if isinstance(status, str) else "missing"


def panel_metrics(df: pd.DataFrame, metric: str) -> list[str]:
    """`metric`, then class accuracy and val NLL where the table has them."""
    extra = [m for m in ("class_accuracy", "val_nll") if m in df and df[m].notna().any()]
    return [metric, *(m for m in extra if m != metric)]


def reference_note(df: pd.DataFrame, metric: str) -> str:
    """`real held-out images 12.3 · untrained model 250.1` (the reference rows' values)."""
    refs = reference_rows(df)
    if refs.empty or metric not in refs:
        return ""
    d = DECIMALS[metric]
    parts = [
        f"{r['label']} {fmt_cell(r[metric], d)}" for _, r in refs.iterrows() if known(r[metric])
    ]
    # No-break spaces inside each part: a wrapped title breaks between rows, never within one.
    return " · ".join(part.replace(" ", "\u00a0") for part in parts)
