"""The tracking callbacks of a run: statistics, encoder gradients, task media and the W&B run id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from perceiver_mt.config import RunConfig
from perceiver_mt.tracking.dispatch import log_media
from perceiver_mt.tracking.gradients import EncoderGradientMonitor
from perceiver_mt.tracking.loggers import RUN_ID_KEY
from perceiver_mt.tracking.stats import TaskStatsMonitor


class MediaMonitor(Callback):
    """Calls each task's `log_media` hook on its first validation batch and logs `media/<task>/<name>`.

    The hook gets fresh outputs of one extra forward pass, so `validation_step` need return nothing.
    """

    def __init__(self, every_n_steps: int, media_dir: Path):
        self.every_n_steps = every_n_steps  # -1 = never; 0 = every validation
        self.media_dir = media_dir
        self.last_step: dict[str, int] = {}

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx != 0 or self.every_n_steps < 0 or trainer.sanity_checking:
            return
        task = pl_module.task_names[dataloader_idx]
        step = trainer.global_step
        last = self.last_step.get(task)
        if last is not None and (step <= last or step - last < self.every_n_steps):
            return
        self.last_step[task] = step
        with torch.no_grad():
            outputs = pl_module(task, batch)  # on every rank: a sharded (FSDP) forward is a collective
        if not trainer.is_global_zero:
            return
        media = pl_module.task_plugins[task].log_media(outputs, batch)
        log_media(trainer, {f"media/{task}/{name}": item for name, item in media.items()}, self.media_dir, step)


class RunIdInCheckpoint(Callback):
    """Stores the W&B run id in every checkpoint, so resuming from it continues the same W&B run."""

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger.version:
                checkpoint[RUN_ID_KEY] = logger.version


def build_callbacks(config: RunConfig) -> list[Callback]:
    if config.logger.kind == "none":
        return []  # nothing would record them; the conflict probe is not free
    media_dir = Path(config.output_dir) / "media"  # CSV-logger runs keep their media here
    return [
        TaskStatsMonitor(),
        EncoderGradientMonitor(config.logger.conflict_every_n_steps, media_dir),
        MediaMonitor(config.logger.media_every_n_steps, media_dir),
        RunIdInCheckpoint(),
    ]
