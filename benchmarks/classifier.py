"""Configs A and B on this project's Perceiver IO: ready-made tokens in, one learned query, class logits out.

`MultiTaskPerceiver` reads only the model parts of a task plugin (adapter, queries, decoder config, head,
init), so the benchmark hands it just those: a whole `Task` would import torchmetrics (~0.1 GB of resident
memory), which would count in this implementation's peak RSS and in no other's. Benchmark-only.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.configs import ClassifierConfig
from perceiver_mt.model import DecoderConfig, EncoderConfig, MultiTaskPerceiver
from perceiver_mt.model.init import fan_in_init_

TASK = "classify"


class ClassifierParts:
    """The model parts of a classification task plugin for configs A and B."""

    def __init__(self, c: ClassifierConfig):
        self.options = c
        self.encoder = EncoderConfig(
            input_channels=c.input_channels, num_latents=c.num_latents, latent_channels=c.latent_channels,
            num_cross_attention_heads=c.cross_heads, cross_attention_qk_channels=c.input_channels,
            cross_attention_v_channels=c.input_channels, cross_attention_widening_factor=c.widening,
            num_self_attention_heads=c.self_heads, self_attention_widening_factor=c.widening,
            num_self_attends_per_block=c.self_layers,
        )

    def build_adapter(self) -> nn.Module:
        return Tokens()

    def build_queries(self) -> nn.Module:
        return LearnedQuery(self.options.latent_channels)

    def decoder_config(self) -> DecoderConfig:
        return DecoderConfig(query_channels=self.options.latent_channels)

    def build_head(self) -> nn.Module:
        return nn.Sequential(nn.Flatten(1), nn.Linear(self.options.latent_channels, self.options.num_classes))

    def init_weights(self, part: nn.Module) -> None:
        fan_in_init_(part)


class Tokens(nn.Module):
    """The benchmark feeds ready-made tokens, as to every other implementation."""

    def forward(self, batch: dict) -> torch.Tensor:
        return batch["inputs"]


class LearnedQuery(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, channels) * 0.02)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.query.expand(batch["inputs"].shape[0], -1, -1)  # (B, 1, D)


def build_classifier_model(c: ClassifierConfig) -> MultiTaskPerceiver:
    task = ClassifierParts(c)
    return MultiTaskPerceiver(task.encoder, {TASK: task})


def classify(model: MultiTaskPerceiver, x: torch.Tensor) -> torch.Tensor:
    """tokens (B, M, C)  ->  logits (B, classes)."""
    return model(TASK, {"inputs": x})
