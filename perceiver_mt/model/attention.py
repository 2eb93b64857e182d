"""Attention building blocks of Perceiver IO: multi-head attention, cross- and self-attention layers.

Attention goes through `F.scaled_dot_product_attention`, so PyTorch picks the fastest fused kernel
(flash / memory-efficient / math) for the device, except where `kernels.attention_kernel` knows a fused
kernel is slow on a GPU: there it is two GEMMs and a softmax. Shapes: B batch, Q queries, K keys, H heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from perceiver_mt.model.kernels import attention_kernel, check_kernel, finite_or_zero, matmul_attention, query_groups


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
        self.kernel = "auto"  # or "fused" / "matmul": see kernels.attention_kernel and set_attention_kernel
        self.to_q = nn.Linear(q_channels, qk_channels)
        self.to_k = nn.Linear(kv_channels, qk_channels)
        self.to_v = nn.Linear(kv_channels, v_channels)
        self.to_out = nn.Linear(v_channels, out_channels)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)  # (B, H, T, C/H)

    def _project(self, x_q: torch.Tensor, x_kv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q, k, v with as few matrix products as the inputs allow: one wide GEMM beats two or three narrow ones."""
        if x_q is x_kv:  # self-attention
            qk, v = self.to_k.out_features, self.to_v.out_features
            weight = torch.cat([self.to_q.weight, self.to_k.weight, self.to_v.weight])
            bias = torch.cat([self.to_q.bias, self.to_k.bias, self.to_v.bias])
            return F.linear(x_q, weight, bias).split([qk, qk, v], dim=-1)
        return (self.to_q(x_q), *self._project_kv(x_kv))

    def _project_kv(self, x_kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k and v in one GEMM: the concatenated (qk + v, Ckv) weight is a copy of weights, not of activations."""
        weight = torch.cat([self.to_k.weight, self.to_v.weight])
        bias = torch.cat([self.to_k.bias, self.to_v.bias])
        return F.linear(x_kv, weight, bias).split([self.to_k.out_features, self.to_v.out_features], dim=-1)

    def forward_in_chunks(
        self,
        x_q: torch.Tensor,
        x_kv: torch.Tensor,
        kv_transform: nn.Module,
        chunk_size: int,
        pad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """As `forward(x_q, kv_transform(x_kv), pad_mask)`, walking the keys `chunk_size` at a time.

        Each chunk's normalised inputs, keys, values and scores are recomputed in backward, so training
        holds one chunk's worth of them rather than all: the way to cross-attend to inputs whose keys
        and values would not fit in memory. Chunks are combined exactly through their log-sum-exps.
        """
        q = self._split_heads(self.to_q(x_q)) * (self.to_q.out_features // self.num_heads) ** -0.5
        dropout = self.dropout if self.training else 0.0
        outs, lses = [], []
        for start in range(0, x_kv.shape[1], chunk_size):
            chunk = x_kv[:, start:start + chunk_size]
            mask = None if pad_mask is None else pad_mask[:, start:start + chunk_size]
            args = (q, chunk, kv_transform, mask, dropout)
            out, lse = (checkpoint(self._attend_chunk, *args, use_reentrant=False) if torch.is_grad_enabled()
                        else self._attend_chunk(*args))
            outs.append(out)
            lses.append(lse)
        lse = finite_or_zero(torch.stack(lses).logsumexp(dim=0))  # (B, H, Q)
        out = sum(o * (l - lse).exp().unsqueeze(-1) for o, l in zip(outs, lses))  # (B, H, Q, Cv/H)
        B, H, Q, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(B, Q, -1))

    def _attend_chunk(
        self, q: torch.Tensor, x_kv: torch.Tensor, kv_transform: nn.Module, pad_mask: torch.Tensor | None,
        dropout: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention of scaled q to one chunk of keys: (output normalised within the chunk, log-sum-exp)."""
        k, v = (self._split_heads(t) for t in self._project_kv(kv_transform(x_kv)))
        scores = q @ k.transpose(-2, -1)  # (B, H, Q, chunk)
        if pad_mask is not None:
            scores = scores.masked_fill(pad_mask[:, None, None, :], float("-inf"))
        lse = scores.logsumexp(dim=-1)  # -inf where the whole chunk is padding: its weight below is 0
        probs = (scores - finite_or_zero(lse).unsqueeze(-1)).exp()
        return F.dropout(probs, dropout) @ v if dropout else probs @ v, lse

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x_q: (B, Q, Cq), x_kv: (B, K, Ckv), pad_mask: (B, K) True = ignore this key  ->  (B, Q, Cout)."""
        q, k, v = (self._split_heads(t) for t in self._project(x_q, x_kv))
        B, H, Q, _ = q.shape
        groups = query_groups(q, k)
        if groups > 1:  # query blocks become extra heads; each sees every key, so results are unchanged
            q = q.reshape(B, H * groups, Q // groups, -1)
            k, v = (t.unsqueeze(2).expand(B, H, groups, *t.shape[2:]).flatten(1, 2) for t in (k, v))
        attend = matmul_attention if attention_kernel(q, k, self.kernel) == "matmul" else F.scaled_dot_product_attention
        out = attend(
            q, k, v,
            attn_mask=padding_to_attention_mask(pad_mask),
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H * groups, Q / groups, Cv/H)
        out = out.reshape(B, H, Q, -1)  # (B, H, Q, Cv/H)
        return self.to_out(out.transpose(1, 2).reshape(B, Q, -1))


def set_attention_kernel(module: nn.Module, kernel: str) -> None:
    """Every attention inside `module` uses `kernel`: "auto" (per device and shape), "fused" (SDPA;
    least memory) or "matmul" (two GEMMs; on some GPU shapes faster, storing the scores)."""
    check_kernel(kernel)
    for attention in module.modules():
        if isinstance(attention, MultiHeadAttention):
            attention.kernel = kernel


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
        kv_chunk_size: int | None = None,
    ):
        super().__init__()
        if kv_chunk_size is not None and kv_chunk_size < 1:
            raise ValueError(f"kv_chunk_size must be a positive number of inputs or None, got {kv_chunk_size}")
        self.kv_chunk_size = kv_chunk_size
        self.q_norm = nn.LayerNorm(q_channels)
        self.kv_norm = nn.LayerNorm(kv_channels)
        self.attention = MultiHeadAttention(
            q_channels, kv_channels, num_heads, qk_channels, v_channels, q_channels, dropout
        )
        self.query_residual = query_residual
        self.mlp = MLP(q_channels, widening_factor, dropout)

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.kv_chunk_size is not None and x_kv.shape[1] > self.kv_chunk_size:
            attended = self.attention.forward_in_chunks(self.q_norm(x_q), x_kv, self.kv_norm, self.kv_chunk_size,
                                                        pad_mask)
        else:
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
