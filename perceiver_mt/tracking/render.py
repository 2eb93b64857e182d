"""Matplotlib drawing shared by media dispatch and `perceiver_mt.report` (headless: the Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from perceiver_mt.tracking.media import Heatmap  # noqa: E402


def heatmap_figure(heatmap: Heatmap) -> Figure:
    matrix = np.asarray(heatmap.matrix, dtype=float)
    R, C = matrix.shape
    size = max(3.0, 0.45 * max(R, C) + 1.5)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    vmin, vmax = heatmap.value_range if heatmap.value_range else (np.nanmin(matrix), np.nanmax(matrix))
    shown = ax.imshow(matrix, vmin=vmin, vmax=vmax, **{"cmap": "viridis", **heatmap.extra})
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(C), heatmap.col_labels, rotation=45, ha="right")
    ax.set_yticks(range(R), heatmap.row_labels)
    ax.set_xlabel(heatmap.col_axis)
    ax.set_ylabel(heatmap.row_axis)
    ax.set_title(heatmap.title)
    if heatmap.annotate and R * C <= 400:
        for r in range(R):
            for c in range(C):
                value = matrix[r, c]
                text = f"{value:.2f}" if not float(value).is_integer() else f"{int(value)}"
                red, green, blue, _ = shown.cmap(shown.norm(value))
                light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5  # dark text on light cells
                ax.text(c, r, text, ha="center", va="center", fontsize=7, color="black" if light else "white")
    fig.tight_layout()
    return fig


def figure_pixels(fig: Figure) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a drawn figure; closes it."""
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return pixels


def save_figure(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
