"""Attention building blocks of Perceiver IO: multi-head attention, cross- and self-attention layers.

This is the reference path: queries, keys and values are projected and attend through PyTorch's
`F.scaled_dot_product_attention`, as in every Perceiver IO implementation. Faster ways to compute the
same layers (same parameters, same function) live in `perceiver_mt/speed/` and are applied to a built
model. Shapes: B batch, Q queries, K keys, H heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    """Multi-head attention whose queries and keys/values may have different channel counts.

    `qk_channels` and `v_channels` are the total widths over all heads; each must divide by `num_heads`.
    """

    def __init__(
        self,
        q_channels: int,
        kv_channels: int,
        num_heads: int = 1,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        out_channels: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        qk_channels = qk_channels or q_channels
        v_channels = v_channels or qk_channels
        out_channels = out_channels or q_channels
        for what, width in (("qk_channels", qk_channels), ("v_channels", v_channels)):
            if width % num_heads:
                raise ValueError(f"{what}={width} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.to_q = nn.Linear(q_channels, qk_channels)
        self.to_k = nn.Linear(kv_channels, qk_channels)
        self.to_v = nn.Linear(kv_channels, v_channels)
        self.to_out = nn.Linear(v_channels, out_channels)

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x_q: (B, Q, Cq), x_kv: (B, K, Ckv), pad_mask: (B, K) True = ignore this key  ->  (B, Q, Cout)."""
        q = self.split_heads(self.to_q(x_q))  # (B, H, Q, Cqk/H)
        k = self.split_heads(self.to_k(x_kv))  # (B, H, K, Cqk/H)
        v = self.split_heads(self.to_v(x_kv))  # (B, H, K, Cv/H)
        may_attend = None if pad_mask is None else ~pad_mask[:, None, None, :]  # (B, 1, 1, K), SDPA's convention
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=may_attend, dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H, Q, Cv/H); scores scaled by 1/sqrt(Cqk/H)
        B, H, Q, C = out.shape
        return self.to_out(out.transpose(1, 2).reshape(B, Q, H * C))

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)  # (B, H, T, C/H)


class MLP(nn.Module):
    """Pre-norm feed-forward block: LayerNorm, widen, GELU, project back."""

    def __init__(self, channels: int, widening_factor: int = 1, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(channels),
            nn.Linear(channels, channels * widening_factor),
            nn.GELU(),
            nn.Linear(channels * widening_factor, channels),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CrossAttentionLayer(nn.Module):
    """Queries attend to a separate key/value array, then an MLP; both with residuals.

    Query and key/value inputs get their own LayerNorm, as in the DeepMind original. The query
    residual is optional because a decoder whose queries are only positions should not copy them out.
    """

    def __init__(
        self,
        q_channels: int,
        kv_channels: int,
        num_heads: int = 1,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        widening_factor: int = 1,
        query_residual: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.q_norm = nn.LayerNorm(q_channels)
        self.kv_norm = nn.LayerNorm(kv_channels)
        self.attention = MultiHeadAttention(
            q_channels, kv_channels, num_heads, qk_channels, v_channels, q_channels, dropout
        )
        self.query_residual = query_residual
        self.mlp = MLP(q_channels, widening_factor, dropout)

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x_q: (B, Q, Cq), x_kv: (B, K, Ckv), pad_mask: (B, K) True = padding  ->  (B, Q, Cq)."""
        attended = self.attention(self.q_norm(x_q), self.kv_norm(x_kv), pad_mask)
        x = x_q + attended if self.query_residual else attended
        return x + self.mlp(x)


class SelfAttentionLayer(nn.Module):
    """Pre-norm transformer layer over the latent array."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        widening_factor: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attention = MultiHeadAttention(channels, channels, num_heads, qk_channels, v_channels, channels, dropout)
        self.mlp = MLP(channels, widening_factor, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        x = x + self.attention(h, h)
        return x + self.mlp(x)
