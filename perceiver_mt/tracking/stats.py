"""Per-task and global training statistics: how often each task trains, how fast, and the learning rate.

Logged every `trainer.log_every_n_steps` optimizer steps, averaged over the steps since the last log:

    train/<task>/loss              mean loss of the task over its own steps (Lightning's `loss_step` is
                                   a snapshot that repeats a stale value for tasks that did not train)
    train/<task>/samples_per_sec   samples of the task per second of the steps that trained it (all ranks)
    train/<task>/steps_sampled     batches the task has trained on so far (survives resume)
    train/<task>/step_share        share of all batches so far that trained the task (1.0 each in "all" mode)
    train/samples_per_sec          all samples per second of wall time, data loading included
    train/steps_per_sec            optimizer steps per second of wall time
    train/lr                       learning rate of the first parameter group
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from perceiver_mt.tracking.dispatch import log_metrics


def batch_size(batch: dict[str, Any]) -> int:
    if "index" in batch:
        return len(batch["index"])
    inputs = batch.get("inputs")
    first = next(iter(inputs.values())) if isinstance(inputs, dict) else inputs
    return int(first.shape[0]) if hasattr(first, "shape") else 1


def step_loss(trainer: Trainer, task: str) -> float | None:
    """The task's loss of the batch that just ran, as the system logged it (on_step and on_epoch: `_step`)."""
    for key in (f"train/{task}/loss_step", f"train/{task}/loss"):
        value = trainer.callback_metrics.get(key)
        if value is not None:
            return float(value)
    return None


class TaskStatsMonitor(Callback):
    def __init__(self) -> None:
        self.sampled: Counter[str] = Counter()  # cumulative batches per task
        self.batches = 0  # cumulative batches
        self._reset_window()
        self._step_start = 0.0
        self._step_tasks: dict[str, int] = {}
        self._last_logged_step = -1

    def _reset_window(self) -> None:
        self.window_samples: Counter[str] = Counter()
        self.window_seconds: Counter[str] = Counter()
        self.window_losses: dict[str, list[float]] = {}
        self.window_start = time.perf_counter()
        self.window_first_step: int | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset_window()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.window_first_step is None:
            self.window_first_step = trainer.global_step
        self._step_tasks = {task: batch_size(task_batch) * trainer.world_size for task, task_batch in batch.items()}
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        seconds = time.perf_counter() - self._step_start
        self.batches += 1
        for task, samples in self._step_tasks.items():
            self.sampled[task] += 1
            self.window_samples[task] += samples
            self.window_seconds[task] += seconds
            loss = step_loss(trainer, task)
            if loss is not None:
                self.window_losses.setdefault(task, []).append(loss)
        step = trainer.global_step
        if step % trainer.log_every_n_steps or step == self._last_logged_step:
            return
        self._last_logged_step = step
        wall = max(time.perf_counter() - self.window_start, 1e-9)
        metrics: dict[str, float] = {}
        for task in sorted(self.sampled):
            metrics[f"train/{task}/steps_sampled"] = float(self.sampled[task])
            metrics[f"train/{task}/step_share"] = self.sampled[task] / max(self.batches, 1)
            if self.window_losses.get(task):
                metrics[f"train/{task}/loss"] = sum(self.window_losses[task]) / len(self.window_losses[task])
            if self.window_seconds[task] > 0:
                metrics[f"train/{task}/samples_per_sec"] = self.window_samples[task] / self.window_seconds[task]
        metrics["train/samples_per_sec"] = sum(self.window_samples.values()) / wall
        metrics["train/steps_per_sec"] = (step - (self.window_first_step or 0)) / wall
        if trainer.optimizers:
            metrics["train/lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        log_metrics(trainer, metrics, step)
        self._reset_window()

    def state_dict(self) -> dict[str, Any]:
        return {"sampled": dict(self.sampled), "batches": self.batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sampled = Counter(state_dict.get("sampled", {}))
        self.batches = int(state_dict.get("batches", sum(self.sampled.values())))
