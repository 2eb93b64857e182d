"""Baselines that tasks report beside their metrics, as torchmetrics (synced across ranks like the rest)."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class MajorityClassAccuracy(Metric):
    """Accuracy of always answering the most frequent class of the evaluated split: the bar to clear.

    It counts the split's own labels, so it is an upper bound on any fixed-answer baseline (and equals
    chance, 1 / num_classes, on a balanced split). Predictions are ignored.
    """

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state("counts", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.counts += torch.bincount(target.reshape(-1), minlength=self.num_classes)

    def compute(self) -> torch.Tensor:
        return self.counts.max().float() / self.counts.sum().clamp(min=1)
