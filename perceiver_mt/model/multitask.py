"""The whole multi-task network: one shared Perceiver IO encoder, one `TaskModel` per task instance.

Pure PyTorch (no Lightning, no torch.distributed), so it can be used, wrapped or sharded on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from perceiver_mt.model.perceiver import EncoderConfig, PerceiverDecoder, PerceiverEncoder

if TYPE_CHECKING:
    from perceiver_mt.task import Batch, Task


class TaskModel(nn.Module):
    """The per-task half of the network: adapter before the shared encoder, queries/decoder/head after."""

    def __init__(self, task: Task, latent_channels: int):
        super().__init__()
        self.adapter = task.build_adapter()
        self.queries = task.build_queries()
        self.decoder = PerceiverDecoder(task.decoder_config(), latent_channels)
        self.head = task.build_head()
        for part in (self.adapter, self.queries, self.head):
            task.init_weights(part)

    def encode_inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        adapted = self.adapter(batch)
        return adapted if isinstance(adapted, tuple) else (adapted, None)

    def decode(self, batch: Batch, latents: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.queries(batch), latents))


class MultiTaskPerceiver(nn.Module):
    """One shared Perceiver IO encoder and one `TaskModel` per task instance. No Lightning inside."""

    def __init__(self, encoder: EncoderConfig, tasks: dict[str, Task]):
        super().__init__()
        self.encoder = PerceiverEncoder(encoder)
        self.tasks = nn.ModuleDict({name: TaskModel(task, encoder.latent_channels) for name, task in tasks.items()})

    def forward(self, task: str, batch: Batch) -> torch.Tensor:
        task_model = self.tasks[task]
        tokens, pad_mask = task_model.encode_inputs(batch)
        latents = self.encoder(tokens, pad_mask)  # (B, N, D)
        return task_model.decode(batch, latents)
