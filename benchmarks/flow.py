"""Config C on this project's Perceiver IO: DeepMind's optical-flow network, benchmark-only.

The core has everything but the flow-specific ends, which live here: the patch projection (two frames of
3x3x3 patches -> 64 channels) followed by 2D Fourier features (`ConcatFourierPositions`: 322 input
channels), per-pixel queries that are the input tokens themselves (as in the original), and the 2-channel
flow head rescaled by 1/100. With the default speedups (`speed.grid_tokens`) the tokens are GridTokens,
Fourier features kept per axis, which inference cross-attends without expanding and training expands once.
As for configs A and B (benchmarks/classifier.py), `MultiTaskPerceiver` gets only a task's model parts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from benchmarks.configs import FlowConfig
from perceiver_mt.model import ConcatFourierPositions, DecoderConfig, EncoderConfig, MultiTaskPerceiver
from perceiver_mt.model.init import fan_in_init_

Batch = dict[str, Any]

FLOW_SCALE = 100.0  # the original's output rescaling
TASK = "flow"


class FlowTokens(nn.Module):
    """frames (B, 2, 27, H, W) of 3x3 patches  ->  tokens (B, H * W, 64 + 258), pixels row-major.

    The tokens are also left in the batch: the decoder's queries are these same tokens (one object, so
    grid tokens are expanded at most once for encoder and decoder together).
    """

    def __init__(self, c: FlowConfig):
        super().__init__()
        self.project = nn.Linear(2 * c.patch_channels, c.patch_hidden)
        self.position = ConcatFourierPositions(c.image, c.num_bands, cached=False)  # recomputed per forward, as HF does

    def forward(self, batch: Batch) -> torch.Tensor:
        B, T, P, H, W = batch["inputs"].shape
        patches = batch["inputs"].permute(0, 3, 4, 1, 2).reshape(B, H * W, T * P)  # (B, M, 54)
        batch["tokens"] = self.position(self.project(patches))  # (B, M, 64 + 258)
        return batch["tokens"]


class InputTokens(nn.Module):
    """The decoder's queries: the tokens the adapter made for this batch."""

    def forward(self, batch: Batch) -> torch.Tensor:
        return batch["tokens"]


class FlowHead(nn.Module):
    """Decoded pixels (B, M, 322)  ->  flow (B, M, 2), each pixel on its own (so it may run per query chunk)."""

    def __init__(self, channels: int):
        super().__init__()
        self.linear = nn.Linear(channels, 2)

    def forward(self, decoded: torch.Tensor) -> torch.Tensor:
        return self.linear(decoded) / FLOW_SCALE


class FlowParts:
    """The model parts of an optical-flow task plugin for config C."""

    def __init__(self, c: FlowConfig):
        self.options = c
        self.channels = c.input_channels  # 64 + 258 = 322
        self.encoder = EncoderConfig(
            input_channels=self.channels, num_latents=c.num_latents, latent_channels=c.latent_channels,
            num_cross_attention_heads=1, cross_attention_qk_channels=self.channels,
            cross_attention_v_channels=self.channels, num_self_attention_heads=c.self_heads,
            num_self_attends_per_block=c.self_layers,
        )

    def build_adapter(self) -> nn.Module:
        return FlowTokens(self.options)

    def build_queries(self) -> nn.Module:
        return InputTokens()

    def decoder_config(self) -> DecoderConfig:
        c = self.options
        return DecoderConfig(query_channels=self.channels, num_heads=1, qk_channels=c.latent_channels,
                             v_channels=c.latent_channels, query_residual=False)

    def build_head(self) -> nn.Module:
        return FlowHead(self.channels)

    def init_weights(self, part: nn.Module) -> None:
        fan_in_init_(part)


def build_flow_model(c: FlowConfig) -> MultiTaskPerceiver:
    task = FlowParts(c)
    return MultiTaskPerceiver(task.encoder, {TASK: task})


def flow(model: MultiTaskPerceiver, frames: torch.Tensor) -> torch.Tensor:
    """frames (B, 2, 27, H, W)  ->  flow (B, H, W, 2)."""
    B, _, _, H, W = frames.shape
    return model(TASK, {"inputs": frames}).view(B, H, W, 2)
