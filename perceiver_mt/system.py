"""The multi-task LightningModule: routes each batch to its task, sums weighted losses, logs per task.

It defines no layers: the network is `MultiTaskPerceiver`, built from task plugins found in the registry.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics.aggregation import SumMetric

from perceiver_mt.config import RunConfig, from_dict, to_dict
from perceiver_mt.optim import build_optimizer
from perceiver_mt.parallel import (
    fsdp_mesh, idle_parameters, parallelize, release_idle_gradients, touch_idle_parameters, touches_every_parameter,
    weigh_across_ranks,
)
from perceiver_mt.plugins import build_network, build_tasks
from perceiver_mt.task import Batch, check_task_batch

SPLITS = ("train", "val", "test")


class MultiTaskSystem(LightningModule):
    def __init__(self, config: dict[str, Any]):
        """`config` is a resolved RunConfig as a plain dict, so checkpoints rebuild the same system."""
        super().__init__()
        self.save_hyperparameters()
        self.run_config = from_dict(config)
        self.task_plugins = build_tasks(self.run_config)
        self.task_names = list(self.task_plugins)  # sorted: evaluation dataloader i is task_names[i]
        self.model = build_network(self.run_config, self.task_plugins, log=rank_zero_info)
        # Keyed "<split>_metrics" because nn.Module already has an attribute called `train`.
        self.metrics = nn.ModuleDict({
            f"{split}_metrics": nn.ModuleDict({
                name: task.build_metrics().clone(prefix=f"{split}/{name}/") for name, task in self.task_plugins.items()
            })
            for split in SPLITS
        })
        # Samples each evaluation's metrics were computed over (summed over ranks): bad data shows as a shortfall.
        self.sample_counts = nn.ModuleDict({
            f"{split}_counts": nn.ModuleDict({name: SumMetric() for name in self.task_plugins}) for split in ("val", "test")
        })
        self._idle: list[nn.Parameter] = []  # DDP only: parameters of the tasks not training this step

    @classmethod
    def from_config(cls, config: RunConfig) -> "MultiTaskSystem":
        return cls(to_dict(config))

    def configure_model(self) -> None:
        # All scaling (activation checkpointing, compile, FSDP units, mixed precision) lives in perceiver_mt.parallel.
        if self._trainer is None:  # load_from_checkpoint calls this too: a plain single-process model then
            return
        parallelize(self.model, self.run_config.parallel, fsdp_mesh(self.trainer.strategy), log=rank_zero_info)

    def forward(self, task: str, batch: Batch) -> torch.Tensor:
        return self.model(task, batch)

    def training_step(self, batch: dict[str, Batch], batch_idx: int) -> torch.Tensor:
        total = torch.zeros((), device=self.device)
        for task, task_batch in batch.items():
            loss = self._shared_step("train", task, task_batch)
            total = total + self.run_config.tasks[task].loss_weight * loss
        # Each rank's total is scaled by its share of the global batch, so their mean is the global loss.
        self.log("train/loss", total.detach(), batch_size=1, sync_dist=True)
        if touches_every_parameter(self.trainer.strategy):
            self._idle = idle_parameters(self.model, batch)
            if self._idle:
                total = total + touch_idle_parameters(self._idle)
        return total

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._shared_step("val", self.task_names[dataloader_idx], batch)

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._shared_step("test", self.task_names[dataloader_idx], batch)

    def on_after_backward(self) -> None:
        release_idle_gradients(self._idle)

    def configure_optimizers(self) -> dict:
        total_steps = self.trainer.max_steps if self.trainer.max_steps > 0 else int(self.trainer.estimated_stepping_batches)
        return build_optimizer(self.model, self.run_config.optim, total_steps)

    def _shared_step(self, split: str, task: str, batch: Batch) -> torch.Tensor:
        plugin = self.task_plugins[task]
        check_task_batch(plugin, batch)
        if split == "train":
            plugin.step = self.global_step
        outputs = self.model(task, batch)
        loss = plugin.loss(outputs, batch)
        metrics = self.metrics[f"{split}_metrics"][task]
        plugin.update_metrics(metrics, outputs, batch)
        batch_size = len(batch["index"]) if "index" in batch else 1
        on_step = split == "train"
        count = plugin.loss_count(batch)
        logged = loss.detach()
        if on_step:  # loss scaled by this rank's share of the global batch; logged: the global batch's loss
            loss, logged, count = weigh_across_ranks(loss, count)
        # Epoch means weigh each batch by its loss count, and sync_dist sums values and counts over ranks
        # before dividing: the exact mean over all ranks' terms, not a mean of per-rank means.
        self.log(f"{split}/{task}/loss", logged, on_step=on_step, on_epoch=True, batch_size=int(count),
                 add_dataloader_idx=False, sync_dist=not on_step)
        if on_step:  # the progress bar: one loss per task, each from the last step that trained it
            self.log(f"loss/{task}", logged, prog_bar=True, logger=False, on_step=True, on_epoch=False, batch_size=1)
        # Metric objects are logged, not values: Lightning then syncs them across ranks at compute().
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=batch_size, add_dataloader_idx=False)
        if not on_step:
            counter = self.sample_counts[f"{split}_counts"][task]
            counter.update(batch_size)
            self.log(f"{split}/{task}/samples", counter, on_step=False, on_epoch=True, add_dataloader_idx=False)
        return loss

