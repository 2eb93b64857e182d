"""Inference for one task by name on raw inputs, from a checkpoint or a live system.

    predictor = Predictor.from_checkpoint("runs/default/checkpoints/last.ckpt")
    predictor.predict("digits", images)               # (B, 8, 8) 0..16 intensities -> (B,) labels
    predictor.predict("pydoc_mlm", ["def f(x): ret\u2588rn x"])  # -> (B, seq_len) predicted bytes
    predictor.predict("optical_flow", frame1, frame2)  # (H, W, 3) uint8 each -> (H, W, 2) flow in pixels
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from perceiver_mt.system import MultiTaskSystem


class Predictor:
    def __init__(self, system: MultiTaskSystem):
        self.system = system.eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str = "cpu") -> "Predictor":
        return cls(MultiTaskSystem.load_from_checkpoint(str(path), map_location=map_location))

    @property
    def tasks(self) -> list[str]:
        return list(self.system.task_names)

    def _plugin(self, task: str) -> Any:
        if task not in self.system.task_plugins:
            raise ValueError(f"unknown task {task!r}; this model has: {', '.join(self.tasks)}")
        return self.system.task_plugins[task]

    @torch.no_grad()
    def outputs(self, task: str, *raw: Any) -> torch.Tensor:
        """Raw model outputs (e.g. logits) for `raw` inputs in the task's documented format (tasks that take
        several inputs, e.g. two frames, take them as separate arguments)."""
        plugin = self._plugin(task)
        batch = plugin.make_batch(*raw)
        plugin.check_batch(batch)
        batch = {k: v.to(self.system.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        return self.system(task, batch)

    def predict(self, task: str, *raw: Any) -> torch.Tensor:
        """Predictions (e.g. class labels, bytes, a flow field) for `raw` inputs."""
        return self._plugin(task).predict(self.outputs(task, *raw))
