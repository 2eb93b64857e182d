"""Attention building blocks of Perceiver IO: multi-head attention, cross- and self-attention layers.

All attention goes through `F.scaled_dot_product_attention`, so PyTorch picks the fastest kernel
(flash / memory-efficient / math) for the device. Shapes: B batch, Q queries, K keys, H heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def padding_to_attention_mask(pad_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, K) bool, True = padding  ->  (B, 1, 1, K) bool, True = may attend (SDPA's convention)."""
    if pad_mask is None:
        return None
    return (~pad_mask)[:, None, None, :]


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

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)  # (B, H, T, C/H)

    def _project(self, x_q: torch.Tensor, x_kv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q, k, v with as few matrix products as the inputs allow: one wide GEMM beats two or three narrow ones."""
        qk, v = self.to_k.out_features, self.to_v.out_features
        kv_weight = torch.cat([self.to_k.weight, self.to_v.weight])  # (qk + v, Ckv): a copy of weights, not activations
        kv_bias = torch.cat([self.to_k.bias, self.to_v.bias])
        if x_q is x_kv:  # self-attention
            weight, bias = torch.cat([self.to_q.weight, kv_weight]), torch.cat([self.to_q.bias, kv_bias])
            return F.linear(x_q, weight, bias).split([qk, qk, v], dim=-1)
        return (self.to_q(x_q), *F.linear(x_kv, kv_weight, kv_bias).split([qk, v], dim=-1))

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x_q: (B, Q, Cq), x_kv: (B, K, Ckv), pad_mask: (B, K) True = ignore this key  ->  (B, Q, Cout)."""
        q, k, v = (self._split_heads(t) for t in self._project(x_q, x_kv))
        B, H, Q, _ = q.shape
        groups = query_groups(q, k)
        if groups > 1:  # query blocks become extra heads; each sees every key, so results are unchanged
            q = q.reshape(B, H * groups, Q // groups, -1)
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=padding_to_attention_mask(pad_mask),
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H * groups, Q / groups, Cv/H)
        out = out.reshape(B, H, Q, -1)  # (B, H, Q, Cv/H)
        return self.to_out(out.transpose(1, 2).reshape(B, Q, -1))


def query_groups(q: torch.Tensor, k: torch.Tensor) -> int:
    """How many query blocks to fold into extra heads so CPU attention backward uses every thread.

    PyTorch's CPU flash-attention backward parallelises over batch x heads only, so one cross-attention
    head at batch 1 runs its (largest) backward on a single thread. Folding queries costs a copy of k and
    v per group, which is why it is limited to training on CPU with fewer batch x heads than threads.
    """
    B, H, Q, _ = q.shape
    threads = torch.get_num_threads()
    if q.device.type != "cpu" or not torch.is_grad_enabled() or not (q.requires_grad or k.requires_grad):
        return 1
    if B * H >= threads:
        return 1
    groups = threads // (B * H)
    return groups if Q % groups == 0 and Q // groups >= 64 else 1


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
