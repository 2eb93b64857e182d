"""Logger-neutral media that task plugins return from `Task.log_media`.

Plugins build these plain objects (numpy inside, no W&B import), and `tracking.dispatch` turns them
into `wandb.Image` / `wandb.Table` / `wandb.Audio` for a W&B run, or into PNG/CSV/WAV files under
`<output_dir>/media/` for a CSV-logger run, so every run keeps its pictures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np


@dataclass
class Image:
    """One picture: (H, W) grey or (H, W, 3) RGB, values in [0, 1] (floats) or 0..255 (uint8)."""

    pixels: np.ndarray
    caption: str = ""


@dataclass
class Images:
    """Several pictures shown side by side under one key (e.g. a grid of samples with labels)."""

    images: list[Image]


@dataclass
class Table:
    """Rows of text/numbers under named columns (e.g. masked text, prediction, truth)."""

    columns: list[str]
    rows: list[list[Any]]


@dataclass
class Heatmap:
    """A labelled matrix drawn as a picture (confusion matrix, gradient conflict matrix)."""

    matrix: np.ndarray  # (R, C)
    row_labels: list[str]
    col_labels: list[str]
    title: str = ""
    row_axis: str = ""
    col_axis: str = ""
    value_range: tuple[float, float] | None = None  # colour scale limits; None = the data's range
    annotate: bool = True  # print each cell's value
    extra: dict[str, Any] = field(default_factory=dict)  # passed to matplotlib's imshow (e.g. cmap)


@dataclass
class Audio:
    """A mono clip: samples in [-1, 1]."""

    samples: np.ndarray  # (T,)
    sample_rate: int
    caption: str = ""


Media = Union[Image, Images, Table, Heatmap, Audio]
