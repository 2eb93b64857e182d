"""Gradients on the shared encoder: their size per task, and how much the tasks' gradients disagree.

Every optimizer step (averaged over `trainer.log_every_n_steps` steps):
    train/grad_norm_encoder          L2 norm of the encoder gradient (before clipping, after DDP averaging)
    train/<task>/grad_norm_encoder   the same, over the steps that trained <task> alone

Every `every_n_steps` steps, the conflict probe: one extra forward/backward per task on that task's
latest training batch, with the weights just updated, gives each task's own encoder gradient g_t;
    conflict/<a>__<b>                cos(g_a, g_b): < 0 means the two tasks pull the encoder apart
    conflict/matrix                  the whole matrix as a heatmap image
The probe uses `torch.autograd.grad`, which returns gradients without touching `.grad`, in eval mode
(no dropout draws), so the training run is the same with or without it. It runs on rank zero only, on
rank zero's batches, with the unwrapped module: no collectives, so the other ranks never wait on it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from perceiver_mt.tracking.dispatch import log_media, log_metrics
from perceiver_mt.tracking.media import Heatmap


def grad_norm(parameters: list[torch.nn.Parameter]) -> float | None:
    squares = [p.grad.detach().float().pow(2).sum() for p in parameters if p.grad is not None]
    if not squares:
        return None
    total = torch.stack([s.full_tensor() if hasattr(s, "full_tensor") else s for s in squares]).sum()
    return math.sqrt(float(total))


def task_gradients(pl_module: LightningModule, batches: dict[str, Any]) -> dict[str, torch.Tensor]:
    """{task: its loss's gradient on the shared encoder, flattened}; `.grad` and RNG state untouched."""
    params = [p for p in pl_module.model.encoder.parameters() if p.requires_grad]
    was_training = pl_module.training
    pl_module.eval()
    gradients = {}
    try:
        with torch.enable_grad():
            for task, batch in batches.items():
                loss = pl_module.task_plugins[task].loss(pl_module.model(task, batch), batch)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                gradients[task] = torch.cat([
                    (g if g is not None else torch.zeros_like(p)).detach().float().reshape(-1)
                    for g, p in zip(grads, params)
                ])
    finally:
        pl_module.train(was_training)
    return gradients


def cosine_matrix(gradients: dict[str, torch.Tensor]) -> np.ndarray:
    G = torch.stack(list(gradients.values()))  # (T, P)
    G = G / G.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return (G @ G.T).cpu().numpy()  # (T, T)


def is_sharded(trainer: Trainer) -> bool:
    name = type(trainer.strategy).__name__.lower()
    return "fsdp" in name or "modelparallel" in name


class EncoderGradientMonitor(Callback):
    def __init__(self, conflict_every_n_steps: int, media_dir: Path):
        self.conflict_every = conflict_every_n_steps
        self.media_dir = media_dir
        self.latest: dict[str, Any] = {}  # task -> its latest training batch (on device)
        self._step_tasks: list[str] = []
        self._norms: dict[str, list[float]] = defaultdict(list)
        self._last_step = -1
        self._probe_off = False

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._step_tasks = list(batch)
        if self.conflict_every > 0 and trainer.is_global_zero:
            self.latest.update(batch)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        norm = grad_norm(list(pl_module.model.encoder.parameters()))
        if norm is None:
            return
        self._norms["train/grad_norm_encoder"].append(norm)
        if len(self._step_tasks) == 1:
            self._norms[f"train/{self._step_tasks[0]}/grad_norm_encoder"].append(norm)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step:  # still accumulating gradients: no optimizer step yet
            return
        self._last_step = step
        if step % trainer.log_every_n_steps == 0 and self._norms:
            log_metrics(trainer, {key: float(np.mean(values)) for key, values in self._norms.items()}, step)
            self._norms.clear()
        if self.conflict_every > 0 and step % self.conflict_every == 0:
            self.probe(trainer, pl_module, step)

    def probe(self, trainer: Trainer, pl_module: LightningModule, step: int) -> None:
        if not trainer.is_global_zero or len(self.latest) < 2 or self._probe_off:
            return
        if is_sharded(trainer):
            rank_zero_info("gradient-conflict probe is off under sharded training (FSDP): it needs whole parameters")
            self._probe_off = True
            return
        gradients = task_gradients(pl_module, dict(sorted(self.latest.items())))
        tasks = list(gradients)
        matrix = cosine_matrix(gradients)
        metrics = {f"conflict/{a}__{b}": float(matrix[i, j])
                   for i, a in enumerate(tasks) for j, b in enumerate(tasks) if i < j}
        if len(self._step_tasks) > 1:
            # "all" mode: the step's gradient mixes tasks, so per-task norms come from the probe
            metrics.update({f"train/{t}/grad_norm_encoder": float(g.norm()) for t, g in gradients.items()})
        log_metrics(trainer, metrics, step)
        heatmap = Heatmap(matrix, tasks, tasks, title=f"task gradient cosine, step {step}",
                          value_range=(-1.0, 1.0), extra={"cmap": "RdBu"})
        log_media(trainer, {"conflict/matrix": heatmap}, self.media_dir, step)
