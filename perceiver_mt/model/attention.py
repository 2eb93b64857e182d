"""Attention building blocks of Perceiver IO: multi-head attention, cross- and self-attention layers.

Attention goes through `F.scaled_dot_product_attention`, so PyTorch picks the fastest fused kernel
(flash / memory-efficient / math) for the device, except where `attention_kernel` knows a fused kernel
is slow on a GPU (too few thread blocks; heads wider than 128 channels in training): there it is two
GEMMs and a softmax. Shapes: B batch, Q queries, K keys, H heads.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

KERNELS = ("auto", "fused", "matmul")
_forced_kernel = "auto"
FUSED_QUERY_BLOCK = 64  # queries per thread block in PyTorch's CUDA memory-efficient attention (fp32)
# CUDA's fused kernels are built for heads of up to 128 channels (flash: 256). Wider heads, like the one
# 512-channel head of DeepMind's per-pixel flow decoder, train 2-4x faster as GEMMs on an H200
# (docs/benchmarks.md, config C); their forward alone stays fused, where it is fast and needs no scores.
FUSED_MAX_HEAD_CHANNELS = 128


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
        kv_weight, kv_bias = self._kv_weight_and_bias()
        if x_q is x_kv:  # self-attention
            weight, bias = torch.cat([self.to_q.weight, kv_weight]), torch.cat([self.to_q.bias, kv_bias])
            return F.linear(x_q, weight, bias).split([qk, qk, v], dim=-1)
        return (self.to_q(x_q), *F.linear(x_kv, kv_weight, kv_bias).split([qk, v], dim=-1))

    def _kv_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """k and v projections as one (qk + v, Ckv) matrix: a copy of weights, not of activations."""
        return torch.cat([self.to_k.weight, self.to_v.weight]), torch.cat([self.to_k.bias, self.to_v.bias])

    def _project_kv(self, x_kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = F.linear(x_kv, *self._kv_weight_and_bias()).split([self.to_k.out_features, self.to_v.out_features], -1)
        return self._split_heads(k), self._split_heads(v)

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
        k, v = self._project_kv(kv_transform(x_kv))
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
        attend = matmul_attention if attention_kernel(q, k) == "matmul" else F.scaled_dot_product_attention
        out = attend(
            q, k, v,
            attn_mask=padding_to_attention_mask(pad_mask),
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H * groups, Q / groups, Cv/H)
        out = out.reshape(B, H, Q, -1)  # (B, H, Q, Cv/H)
        return self.to_out(out.transpose(1, 2).reshape(B, Q, -1))


def query_groups(q: torch.Tensor, k: torch.Tensor) -> int:
    """How many query blocks to fold into extra heads so CPU attention backward uses every thread.

    PyTorch's CPU flash-attention backward parallelises over batch x heads only, so one cross-attention
    head at batch 1 runs its (largest) backward on a single thread. With one head the extra heads' k and
    v are stride-0 views of the one k and v (no copy is saved for backward); with several heads they
    are copies, which is why folding is limited to training on CPU with fewer batch x heads than threads.
    """
    B, H, Q, _ = q.shape
    threads = torch.get_num_threads()
    if q.device.type != "cpu" or not torch.is_grad_enabled() or not (q.requires_grad or k.requires_grad):
        return 1
    if B * H >= threads:
        return 1
    groups = threads // (B * H)
    return groups if Q % groups == 0 and Q // groups >= 64 else 1


def finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    return x.masked_fill(~x.isfinite(), 0.0)


def matmul_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention as two matrix products and a softmax, with SDPA's signature and conventions."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, Q, K)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    probs = F.dropout(scores.softmax(dim=-1), dropout_p) if dropout_p else scores.softmax(dim=-1)
    return probs @ v


def attention_kernel(q: torch.Tensor, k: torch.Tensor) -> str:
    """"fused" (SDPA) or "matmul" for these shapes; `force_attention_kernel` overrides the choice."""
    if _forced_kernel != "auto":
        return _forced_kernel
    if q.device.type != "cuda":
        return "fused"  # CPU kernels split the work differently (see query_groups)
    B, H, Q, head_channels = q.shape
    multiprocessors = torch.cuda.get_device_properties(q.device).multi_processor_count
    training = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)
    return cuda_attention_kernel(B, H, Q, head_channels, k.shape[-2], q.dtype, multiprocessors, training)


def cuda_attention_kernel(
    batch: int, heads: int, queries: int, head_channels: int, keys: int, dtype: torch.dtype, multiprocessors: int,
    training: bool,
) -> str:
    """The faster attention on a CUDA GPU for these shapes, as measured on an H200 (docs/benchmarks.md)."""
    if fused_kernel_starves(batch, heads, queries, keys, dtype, multiprocessors):
        return "matmul"
    return "matmul" if training and head_channels > FUSED_MAX_HEAD_CHANNELS else "fused"


def fused_kernel_starves(
    batch: int, heads: int, queries: int, keys: int, dtype: torch.dtype, multiprocessors: int,
) -> bool:
    """Whether CUDA's fp32 fused attention would leave most of the GPU idle on these shapes.

    The memory-efficient kernel (the fused one fp32 gets) gives each (batch, head, block of 64 queries)
    to one multiprocessor, which walks every key. A Perceiver cross-attention with one head and a few
    hundred latents against tens of thousands of inputs makes fewer blocks than the GPU has
    multiprocessors, each walking a long row. Two GEMMs and a softmax spread over the whole GPU instead,
    at the cost of materialising the (B, H, Q, K) scores. Measured on an H200 (docs/benchmarks.md):
    config B trains 1.6x faster this way in fp32; in bf16 flash attention is faster than the GEMMs.
    """
    blocks = batch * heads * math.ceil(queries / FUSED_QUERY_BLOCK)
    return dtype == torch.float32 and blocks < multiprocessors and keys >= 8 * queries


@contextlib.contextmanager
def force_attention_kernel(kernel: str) -> Iterator[None]:
    """Within this block every attention uses `kernel` ("auto", "fused" or "matmul"): for benchmarks and tests."""
    global _forced_kernel
    if kernel not in KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    previous, _forced_kernel = _forced_kernel, kernel
    try:
        yield
    finally:
        _forced_kernel = previous


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
