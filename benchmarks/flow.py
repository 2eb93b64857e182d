"""Config C on this project's Perceiver IO: DeepMind's optical-flow network, benchmark-only.

The core has everything but the flow-specific ends, which live here: the patch projection (two frames
of 3x3x3 patches -> 64 channels, plus 2D Fourier features -> 322 input channels), per-pixel queries
that are the input tokens themselves (as in the original), and the 2-channel flow head rescaled by 1/100.
The tokens go to the encoder and decoder as GridTokens (Fourier features kept per axis), which inference
cross-attends without expanding and training expands once.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.configs import FlowConfig
from perceiver_mt.model import DecoderConfig, EncoderConfig, FourierPositionEncoding, PerceiverDecoder, PerceiverEncoder

FLOW_SCALE = 100.0  # the original's output rescaling


class OpticalFlowPerceiver(nn.Module):
    """frames (B, 2, 27, H, W) of 3x3 patches  ->  flow (B, H, W, 2)."""

    def __init__(
        self,
        config: FlowConfig,
        activation_checkpointing: bool = False,
        query_chunk_size: int | None = None,
        input_chunk_size: int | None = None,
    ):
        super().__init__()
        c = config
        self.config = c
        self.project = nn.Linear(2 * c.patch_channels, c.patch_hidden)
        self.position = FourierPositionEncoding(c.image, c.num_bands, cached=False)  # recomputed per forward, as HF does
        C = c.patch_hidden + self.position.num_channels  # 322
        self.encoder = PerceiverEncoder(EncoderConfig(
            input_channels=C, num_latents=c.num_latents, latent_channels=c.latent_channels,
            num_cross_attention_heads=1, cross_attention_qk_channels=C, cross_attention_v_channels=C,
            num_self_attention_heads=c.self_heads, num_self_attends_per_block=c.self_layers,
            activation_checkpointing=activation_checkpointing, input_chunk_size=input_chunk_size,
        ))
        self.decoder = PerceiverDecoder(DecoderConfig(
            query_channels=C, num_heads=1, qk_channels=c.latent_channels, v_channels=c.latent_channels,
            query_residual=False, activation_checkpointing=activation_checkpointing,
            query_chunk_size=query_chunk_size,
        ), c.latent_channels)
        self.head = nn.Linear(C, 2)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        B, T, P, H, W = frames.shape
        patches = frames.permute(0, 3, 4, 1, 2).reshape(B, H * W, T * P)  # (B, M, 54), row-major pixels
        tokens = self.position.grid_tokens(self.project(patches))  # (B, M, 64 + 258), positions kept per axis
        latents = self.encoder(tokens)  # (B, N, D)
        flow = self.decoder(tokens, latents, head=self.head) / FLOW_SCALE  # (B, M, 2): queries = the input tokens
        return flow.view(B, H, W, 2)
