"""Inference for one task by name on raw inputs, from a checkpoint or a live system.

    predictor = Predictor.from_checkpoint("runs/default/checkpoints/last.ckpt")
    predictor.predict("digits", images)               # (B, 8, 8) 0..16 intensities -> (B,) labels
    predictor.predict("pydoc_mlm", ["def f(x): ret\u2588rn x"])  # -> (B, seq_len) predicted bytes

Checkpoints of every kind load alike: a file (one process, DDP, FSDP with `parallel.checkpoint=full`) or
the folder of a sharded FSDP checkpoint. Input the task cannot take is one `ValueError` line saying
what was expected.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from perceiver_mt.checks import read_checkpoint_metadata
from perceiver_mt.parallel import consolidate_checkpoint
from perceiver_mt.system import MultiTaskSystem, check_batch


class Predictor:
    def __init__(self, system: MultiTaskSystem):
        self.system = system.eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str = "cpu") -> "Predictor":
        path = Path(path)
        read_checkpoint_metadata(path)  # one line for a missing, empty, damaged or foreign file
        if path.is_dir():  # a sharded checkpoint: its shards gathered into one file for this one process
            with tempfile.TemporaryDirectory() as scratch:
                single = consolidate_checkpoint(path, Path(scratch) / "model.ckpt")
                return cls(MultiTaskSystem.load_from_checkpoint(str(single), map_location=map_location))
        return cls(MultiTaskSystem.load_from_checkpoint(str(path), map_location=map_location))

    @property
    def tasks(self) -> list[str]:
        return list(self.system.task_names)

    def _plugin(self, task: str) -> Any:
        if task not in self.system.task_plugins:
            raise ValueError(f"unknown task {task!r}; this model has: {', '.join(self.tasks)}")
        return self.system.task_plugins[task]

    @torch.no_grad()
    def outputs(self, task: str, raw: Any) -> torch.Tensor:
        """Raw model outputs (e.g. logits) for `raw` inputs in the task's documented format."""
        plugin = self._plugin(task)
        try:
            batch = plugin.make_batch(raw)
        except (TypeError, IndexError) as error:  # a plugin's own checks raise ValueError; these are its surprises
            raise ValueError(f"task {task!r} cannot take this input ({type(raw).__name__}): {error}") from None
        if batch_size(batch) == 0:
            raise ValueError(f"task {task!r} got an empty batch: give at least one input")
        check_batch(plugin, batch)
        batch = {k: v.to(self.system.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        return self.system(task, batch)

    def predict(self, task: str, raw: Any) -> torch.Tensor:
        """Predictions (e.g. class labels, bytes) for `raw` inputs."""
        return self._plugin(task).predict(self.outputs(task, raw))


def batch_size(batch: dict[str, Any]) -> int | None:
    """Leading size of the batch's inputs (the first tensor among them), or None if it has no tensor."""
    inputs = batch.get("inputs")
    first = next(iter(inputs.values()), None) if isinstance(inputs, dict) else inputs
    return int(first.shape[0]) if torch.is_tensor(first) and first.dim() > 0 else None
