"""Inference for one task by name on raw inputs: the network and its task plugins, no Trainer.

    predictor = Predictor.from_checkpoint("runs/default/checkpoints/last.ckpt")
    predictor.predict("digits", images)               # (B, 8, 8) 0..16 intensities -> (B,) labels
    predictor.predict("pydoc_mlm", ["def f(x): ret\u2588rn x"])  # -> (B, seq_len) predicted bytes
    predictor.predict("optical_flow", frame1, frame2)  # (H, W, 3) uint8 each -> (H, W, 2) flow in pixels
    predictor.save_pretrained("exported/")            # safetensors + resolved config
    Predictor.from_pretrained("exported/")            # the same model, without Lightning or the training config

Checkpoints of every kind load alike: a file (one process, DDP, FSDP with `parallel.checkpoint=full`) or
the folder of a sharded FSDP checkpoint; so do pretrained folders (`perceiver_mt.pretrained`, e.g. converted
Hugging Face models). Input the task cannot take is one `ValueError` line saying what was expected.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from perceiver_mt.checks import read_checkpoint_metadata
from perceiver_mt.config import RunConfig
from perceiver_mt.plugins import build_tasks
from perceiver_mt.pretrained import from_pretrained, save_pretrained
from perceiver_mt.task import Task, check_task_batch

if TYPE_CHECKING:
    from perceiver_mt.system import MultiTaskSystem


class Predictor:
    def __init__(self, network: nn.Module, plugins: dict[str, Task], config: RunConfig):
        """`network`: a MultiTaskPerceiver; `plugins`: its task plugins by name; `config`: what built them."""
        self.network = network.eval()
        self.plugins = plugins
        self.config = config

    @classmethod
    def from_system(cls, system: MultiTaskSystem) -> "Predictor":
        return cls(system.model, system.task_plugins, system.run_config)

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str = "cpu") -> "Predictor":
        """A training checkpoint (a file, or a sharded FSDP folder)."""
        # Training checkpoints are Lightning's: only this way in needs it.
        from perceiver_mt.parallel import consolidate_checkpoint
        from perceiver_mt.system import MultiTaskSystem

        path = Path(path)
        read_checkpoint_metadata(path)  # one line for a missing, empty, damaged or foreign file
        if path.is_dir():  # a sharded checkpoint: its shards gathered into one file for this one process
            with tempfile.TemporaryDirectory() as scratch:
                single = consolidate_checkpoint(path, Path(scratch) / "model.ckpt")
                return cls.from_system(MultiTaskSystem.load_from_checkpoint(str(single), map_location=map_location))
        return cls.from_system(MultiTaskSystem.load_from_checkpoint(str(path), map_location=map_location))

    @classmethod
    def from_pretrained(cls, folder: str | Path, map_location: str = "cpu") -> "Predictor":
        """A pretrained folder (`save_pretrained`, or `python -m perceiver_mt.convert`): no Lightning involved."""
        network, config = from_pretrained(folder, map_location)
        return cls(network, build_tasks(config), config)

    def save_pretrained(self, folder: str | Path) -> Path:
        """The network's weights (safetensors) and the config that rebuilds it, for `from_pretrained`."""
        return save_pretrained(self.network, self.config, folder)

    @property
    def tasks(self) -> list[str]:
        return list(self.plugins)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def _plugin(self, task: str) -> Any:
        if task not in self.plugins:
            raise ValueError(f"unknown task {task!r}; this model has: {', '.join(self.tasks)}")
        return self.plugins[task]

    @torch.no_grad()
    def outputs(self, task: str, *raw: Any) -> torch.Tensor:
        """Raw model outputs (e.g. logits) for `raw` inputs in the task's documented format (tasks that take
        several inputs, e.g. two frames, take them as separate arguments)."""
        plugin = self._plugin(task)
        try:
            batch = plugin.make_batch(*raw)
        except (TypeError, IndexError) as error:  # a plugin's own checks raise ValueError; these are its surprises
            raise ValueError(f"task {task!r} cannot take this input "
                             f"({', '.join(type(r).__name__ for r in raw)}): {error}") from None
        if batch_size(batch) == 0:
            raise ValueError(f"task {task!r} got an empty batch: give at least one input")
        check_task_batch(plugin, batch)
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        return self.network(task, batch)

    def predict(self, task: str, *raw: Any) -> torch.Tensor:
        """Predictions (e.g. class labels, bytes, a flow field) for `raw` inputs."""
        return self._plugin(task).predict(self.outputs(task, *raw))


def batch_size(batch: dict[str, Any]) -> int | None:
    """Leading size of the batch's inputs (the first tensor among them), or None if it has no tensor."""
    inputs = batch.get("inputs")
    first = next(iter(inputs.values()), None) if isinstance(inputs, dict) else inputs
    return int(first.shape[0]) if torch.is_tensor(first) and first.dim() > 0 else None
