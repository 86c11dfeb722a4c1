"""Pictures on a grid: the scan orders (the paper's supplementary Fig. 6, Table 3's target
orders) and the sample grid of every row of a table, beside real images of the same classes.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rar.experiments.results import grid_samples_info
from rar.report.columns import PathLike
from rar.report.figures import DPI, RANDOM_ORDER, empty_note, figure, save_png

# ##########################################################################################
# Scan orders (RAR appendix figure; Table 3's target orders)
# ##########################################################################################


def plot_scan_orders(*, out: PathLike, grid: int = 16, orders: Sequence[str] | None = None) -> Path:
    """The scan orders (default all six of rar.model.orders.SCAN_ORDERS) drawn as the paper's
    supplementary Fig. 6 draws them: on the `grid` x `grid` token grid (the paper's 16x16 by
    default; the workflow passes its study's grid), each cell prints the step at which it is visited
    and is coloured by it (early dark, late bright), and a thin line joins the cell centres in
    visiting order. 2 x 3 panels for the six orders."""
    from rar.model.orders import SCAN_ORDERS, scan_order  # imports torch

    orders = list(orders or SCAN_ORDERS)
    ncols = min(3, len(orders))
    nrows = math.ceil(len(orders) / ncols)
    side = 4.8 if grid >= 16 else 3.3  # 16x16 needs ~35 px a cell for three-digit numbers
    fig = figure(side * ncols, (side + 0.3) * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, orders, strict=False):  # spare panels stay empty
        _scan_panel(ax, scan_order(name, grid).numpy(), grid)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(orders) :]:
        ax.set_axis_off()
    fig.suptitle(
        f"Scan orders on a {grid}x{grid} token grid (RAR Table 3, supplementary Fig. 6): "
        "number = visiting step, red circle = first token"
    )
    return save_png(fig, out)


def _scan_panel(ax, visit: np.ndarray, grid: int) -> None:
    """One order: visit[k] = raster index of the k-th token visited."""
    from matplotlib import colormaps, patheffects

    cmap = colormaps["viridis"]
    n = grid * grid
    step = np.empty(n, dtype=int)
    step[visit] = np.arange(n)  # the inverse: raster index -> visiting step
    ax.imshow(step.reshape(grid, grid), cmap=cmap, vmin=0, vmax=n - 1)
    rows, cols = np.divmod(visit, grid)
    # The whole path, long jumps included (subsample, z-curve, row-major line ends), as
    # in Fig. 6: thin and faint; each number is outlined in its cell's colour, which
    # masks the lines crossing it.
    ax.plot(cols, rows, color="white", lw=0.5, alpha=0.5)
    ax.plot(cols[0], rows[0], "o", ms=9 * 16 / grid, mfc="none", mec="red", mew=1.2)
    if grid > 16:  # numbers stop being readable beyond that
        return
    for k, (r, c) in enumerate(zip(rows, cols, strict=True)):
        red, green, blue, _ = rgba = cmap(k / (n - 1))
        light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5  # luma of the cell
        ax.text(
            c,
            r,
            str(k),
            ha="center",
            va="center",
            fontsize=max(5.0, 88 / grid),
            color="black" if light else "white",
            path_effects=[patheffects.withStroke(linewidth=2, foreground=rgba)],
        )


# ##########################################################################################
# Sample grids
# ##########################################################################################


def plot_sample_grids(
    *,
    grids: list[dict],
    out: PathLike,
    max_rows: int | None = None,
    real: PathLike | None = None,
    class_names: Sequence[str] | None = None,
    ncols: int = 4,
    panel: float | None = None,
) -> Path:
    """The sample grid of every row as a grid of panels, each with its full label, the first
    panel real images of the same classes (`real`: a folder of class folders, e.g. the
    demo's images/val), and the class names beside the first panel of each line. A panel
    sampled in random order says so; a missing grid is a blank panel that says so.

    grids: [{"label", "png"}] (rar.sampling.sampler's grid.png: one row per class of samples.json's
    `grid_classes`); max_rows: sample rows kept per grid; class_names: the name of each class
    id (default: the sorted class folders of `real`, the ids rar.data.images assigns);
    ncols / panel: panels per line and their width in inches (default: the grid's own pixels,
    at most 2.7 in, so small images are never resampled). Stored with a 256-colour palette,
    so a page of photographs stays a few hundred kB."""
    images = [_grid_image(g["png"], max_rows) for g in grids]
    infos = [grid_samples_info(g["png"]) for g in grids]
    shown = next((i["grid_classes"] for i in infos if i.get("grid_classes")), None)
    if max_rows is not None and shown:
        shown = shown[:max_rows]
    names = list(class_names) if class_names else None
    if names is None and real is not None and Path(real).is_dir():
        names = sorted(e.name for e in os.scandir(real) if e.is_dir())
    found = [im for im in images if im is not None]
    panels = _real_panel(real, shown, names, found) + [
        (_grid_label(g, info), im) for g, im, info in zip(grids, images, infos, strict=True)
    ]
    # A missing panel takes the shape of the others so that the page keeps its rhythm.
    aspect = float(np.median([im.shape[0] / im.shape[1] for im in found])) if found else 1.0
    if panel is None:
        panel = min(2.7, max(1.6, found[0].shape[1] / DPI)) if found else 2.7
    n = max(1, len(panels))
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    left = 1.3 if shown and names else 0.2
    fig = figure(panel * ncols + left, (panel * aspect + 0.45) * nrows + 0.3)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(panels):
            ax.set_axis_off()
            continue
        label, im = panels[k]
        _draw_grid(ax, label, im, aspect, width=panel)
        if k % ncols == 0 and shown and names and im is not None:
            step = im.shape[0] / len(shown)
            ax.set_yticks(
                [step * (r + 0.5) for r in range(len(shown))],
                [names[c] if c < len(names) else str(c) for c in shown],
                fontsize=8,
            )
            ax.tick_params(axis="y", length=0)
        else:
            ax.set_yticks([])
    if not grids:
        axes[0, 0].text(0.5, 0.5, "no sample grids", ha="center", va="center")
    return save_png(fig, out, palette=128)  # 128 colours: ~450 kB for 17 demo panels


def _real_panel(
    real: PathLike | None, shown: list[int] | None, names: list[str] | None, found: list
) -> list[tuple[str, np.ndarray]]:
    """The panel of real images of the shown classes, laid out like the first sample grid
    (`found`), where `real`, the classes and their names are known; else none."""
    if real is None or not shown or not names or not found:
        return []
    side = found[0].shape[0] // len(shown)
    per_class = found[0].shape[1] // side
    real_img = _real_grid(real, shown, names, side, per_class)
    return [] if real_img is None else [("real images of these classes", real_img)]


def _grid_label(grid: dict, info: dict) -> str:
    """A row's panel title: its label, and whether it was sampled in random order."""
    if (info.get("sampling") or {}).get("order") == "random":
        return f"{grid['label']} ({RANDOM_ORDER})"
    return grid["label"]


def _draw_grid(ax, label: str, im: np.ndarray | None, aspect: float, *, width: float) -> None:
    """One panel: the grid (or a grey blank that says `missing`), its label wrapped to fit."""
    if im is None:
        ax.imshow(np.full((100, round(100 / aspect), 3), 235, dtype=np.uint8))
        empty_note(ax, "missing", color="0.3", fontsize=9)
    else:
        ax.imshow(im, interpolation="nearest" if im.shape[1] < 400 else "antialiased")
    ax.set_title(textwrap.fill(label, max(12, round(width * 15))), fontsize=8)
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _grid_image(png: PathLike, max_rows: int | None) -> np.ndarray | None:
    """A grid.png as an array, cut to its first `max_rows` rows of samples. The sample height
    comes from samples.json beside it (`grid_classes`: one grid row per class,
    rar.sampling.sampler); without that file the grid is shown whole."""
    from PIL import Image

    png = Path(png)
    if not png.exists():
        return None
    img = np.asarray(Image.open(png).convert("RGB"))
    n_rows = len(grid_samples_info(png).get("grid_classes") or [])
    if max_rows is not None and n_rows:
        img = img[: img.shape[0] // n_rows * min(max_rows, n_rows)]
    return img


def _real_grid(
    folder: PathLike, classes: list[int], names: list[str], side: int, per_class: int
) -> np.ndarray | None:
    """Real images laid out as a sample grid: for each class id of `classes`, the first
    `per_class` images (sorted by name) of `folder/<names[id]>/`, centre-cropped to a square
    and resized to `side` pixels."""
    from PIL import Image

    rows = []
    for c in classes:
        if c >= len(names):
            return None
        files = sorted(
            p
            for p in (Path(folder) / names[c]).iterdir()
            if p.suffix.lower() in {".png", ".jpg", ".jpeg"}
        )[:per_class]
        cells = []
        for f in files:
            with Image.open(f) as im:
                im = im.convert("RGB")
                s = min(im.size)
                left, top = (im.width - s) // 2, (im.height - s) // 2
                im = im.resize((side, side), Image.BICUBIC, box=(left, top, left + s, top + s))
                cells.append(np.asarray(im))
        cells += [np.full((side, side, 3), 255, np.uint8)] * (per_class - len(cells))
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0) if rows else None
