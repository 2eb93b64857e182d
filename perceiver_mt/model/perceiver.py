"""Perceiver IO: a shared encoder (inputs -> latents) and per-task decoders (queries x latents -> outputs).

Pure PyTorch; usable without Lightning:

    encoder = PerceiverEncoder(EncoderConfig(input_channels=64))
    latents = encoder(tokens, pad_mask)                  # (B, M, C) -> (B, N, D)
    decoder = PerceiverDecoder(DecoderConfig(query_channels=32), encoder.config.latent_channels)
    outputs = decoder(queries, latents)                  # (B, O, Cq) -> (B, O, Cq)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from perceiver_mt.model.attention import CrossAttentionLayer, SelfAttentionLayer
from perceiver_mt.model.init import fan_in_init_, sharpen_queries_


@dataclass
class EncoderConfig:
    input_channels: int = 64  # C: every task adapter maps its raw input to tokens of this width
    num_latents: int = 128  # N: cost of each self-attention layer grows as N^2
    latent_channels: int = 128  # D: width of the latent array
    num_cross_attention_heads: int = 1
    cross_attention_qk_channels: int | None = None  # None = latent_channels
    cross_attention_v_channels: int | None = None  # None = qk channels
    cross_attention_widening_factor: int = 1
    # The cross-attention's query weights start this many times larger than fan-in: sharper first attention, so
    # that latents take single tokens early (inputs whose tokens cancel when averaged, e.g. raw audio, need it).
    cross_attention_query_gain: float = 1.0
    num_cross_attends: int = 1  # >1 = iterative attention (Perceiver v1); weights shared after the first
    num_self_attention_heads: int = 4
    self_attention_qk_channels: int | None = None
    self_attention_v_channels: int | None = None
    self_attention_widening_factor: int = 1
    num_self_attends_per_block: int = 2  # distinct layers in the latent block (parameters)
    num_blocks: int = 1  # times the latent block is applied, sharing weights (compute, no parameters)
    dropout: float = 0.0


@dataclass
class DecoderConfig:
    query_channels: int = 64  # width of each output query and of each decoder output vector
    num_heads: int = 1
    qk_channels: int | None = None  # None = query_channels
    v_channels: int | None = None
    widening_factor: int = 1
    query_residual: bool = True  # add the query back after attention (off for pure-position queries)
    query_gain: float = 1.0  # the query weights start this many times larger than fan-in (EncoderConfig's note)
    dropout: float = 0.0


class PerceiverEncoder(nn.Module):
    """Cross-attends a learned latent array to the input tokens, then refines it with self-attention."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        if config.num_cross_attends > config.num_blocks:
            raise ValueError(
                f"num_cross_attends={config.num_cross_attends} must be <= num_blocks={config.num_blocks}: "
                "each cross-attend precedes one application of the latent block"
            )
        self.config = config
        c = config
        self.latents = nn.Parameter(torch.empty(c.num_latents, c.latent_channels))
        nn.init.trunc_normal_(self.latents, std=0.02, a=-2.0, b=2.0)

        def cross_attention() -> CrossAttentionLayer:
            return CrossAttentionLayer(
                c.latent_channels, c.input_channels, c.num_cross_attention_heads,
                c.cross_attention_qk_channels, c.cross_attention_v_channels,
                c.cross_attention_widening_factor, query_residual=True, dropout=c.dropout,
            )

        # The first cross-attention has its own weights; all later ones share the second's.
        self.cross_attentions = nn.ModuleList([cross_attention() for _ in range(min(c.num_cross_attends, 2))])
        self.self_attentions = nn.ModuleList(
            SelfAttentionLayer(
                c.latent_channels, c.num_self_attention_heads, c.self_attention_qk_channels,
                c.self_attention_v_channels, c.self_attention_widening_factor, c.dropout,
            )
            for _ in range(c.num_self_attends_per_block)
        )
        fan_in_init_(self)
        for layer in self.cross_attentions:
            sharpen_queries_(layer, c.cross_attention_query_gain, "cross_attention_query_gain")

    def forward(self, tokens: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens: (B, M, C), pad_mask: (B, M) True = padding  ->  latents (B, N, D)."""
        B, M, C = tokens.shape
        if C != self.config.input_channels:
            raise ValueError(f"encoder expects tokens of {self.config.input_channels} channels, got shape {tuple(tokens.shape)}")
        x = self.latents.expand(B, -1, -1)  # (B, N, D)
        for block in range(self.config.num_blocks):
            if block < self.config.num_cross_attends:
                x = self.cross_attentions[min(block, 1)](x, tokens, pad_mask)
            for layer in self.self_attentions:
                x = layer(x)
        return x


class PerceiverDecoder(nn.Module):
    """Output queries cross-attend to the latents; one output vector per query."""

    def __init__(self, config: DecoderConfig, latent_channels: int):
        super().__init__()
        self.config = config
        self.cross_attention = CrossAttentionLayer(
            config.query_channels, latent_channels, config.num_heads, config.qk_channels,
            config.v_channels, config.widening_factor, config.query_residual, config.dropout,
        )
        fan_in_init_(self)
        sharpen_queries_(self.cross_attention, config.query_gain, "decoder query_gain")

    def forward(self, queries: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """queries: (B, O, Cq), latents: (B, N, D)  ->  (B, O, Cq)."""
        return self.cross_attention(queries, latents)
