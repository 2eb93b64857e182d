"""Send metrics and media to whatever loggers the Trainer has: W&B objects, or files beside a CSV log.

Callbacks log straight to the loggers (not through `LightningModule.log`) so that a value computed
every K steps is written at exactly that step, whatever `log_every_n_steps` says.
"""

from __future__ import annotations

import csv
import math
import re
import wave
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from perceiver_mt.tracking.media import Audio, Heatmap, Image, Images, Media, Table


def log_metrics(trainer: Trainer, metrics: dict[str, float], step: int | None = None) -> None:
    if not trainer.is_global_zero or not metrics:
        return
    step = trainer.global_step if step is None else step
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


def log_media(trainer: Trainer, media: dict[str, Media], media_dir: Path, step: int | None = None) -> None:
    """W&B loggers get W&B media objects; CSV loggers get files under `media_dir/step_<N>/`."""
    if not trainer.is_global_zero or not media:
        return
    step = trainer.global_step if step is None else step
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.log({**{key: to_wandb(item) for key, item in media.items()}, "trainer/global_step": step})
        elif isinstance(logger, CSVLogger):
            for key, item in media.items():
                write_file(item, media_dir / f"step_{step:07d}" / safe_name(key))


def safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint8:
        return pixels
    return (np.clip(pixels.astype(np.float32), 0.0, 1.0) * 255).round().astype(np.uint8)


def to_wandb(item: Media) -> Any:
    import wandb

    from perceiver_mt.tracking.render import figure_pixels, heatmap_figure

    if isinstance(item, Image):
        return wandb.Image(to_uint8(item.pixels), caption=item.caption or None)
    if isinstance(item, Images):
        return [wandb.Image(to_uint8(image.pixels), caption=image.caption or None) for image in item.images]
    if isinstance(item, Table):
        return wandb.Table(columns=list(item.columns), data=[list(row) for row in item.rows])
    if isinstance(item, Heatmap):
        return wandb.Image(figure_pixels(heatmap_figure(item)), caption=item.title or None)
    if isinstance(item, Audio):
        return wandb.Audio(np.asarray(item.samples, dtype=np.float32), sample_rate=item.sample_rate,
                           caption=item.caption or None)
    raise TypeError(f"unsupported media type {type(item).__name__}; use perceiver_mt.tracking.media types")


def write_file(item: Media, stem: Path) -> Path:
    """One media item as a file beside the CSV log: PNG for pictures, CSV for tables, WAV for audio."""
    import matplotlib.pyplot as plt

    from perceiver_mt.tracking.render import heatmap_figure, save_figure

    stem.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(item, Image):
        item = Images([item])
    if isinstance(item, Images):
        n = len(item.images)
        cols = min(n, 8)
        rows = math.ceil(n / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.6 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, image in zip(axes.flat, item.images):
            ax.imshow(to_uint8(image.pixels), cmap="gray", vmin=0, vmax=255)
            ax.set_title(image.caption, fontsize=7)
        return save_figure(fig, stem.with_suffix(".png"))
    if isinstance(item, Heatmap):
        return save_figure(heatmap_figure(item), stem.with_suffix(".png"))
    if isinstance(item, Table):
        path = stem.with_suffix(".csv")
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(item.columns)
            writer.writerows(item.rows)
        return path
    if isinstance(item, Audio):
        path = stem.with_suffix(".wav")
        samples = (np.clip(np.asarray(item.samples, dtype=np.float32), -1, 1) * 32767).astype("<i2")
        with wave.open(str(path), "wb") as handle:
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(item.sample_rate)
            handle.writeframes(samples.tobytes())
        return path
    raise TypeError(f"unsupported media type {type(item).__name__}; use perceiver_mt.tracking.media types")
