"""Attention building blocks of Perceiver IO: multi-head attention, cross- and self-attention layers.

Attention goes through `F.scaled_dot_product_attention`, so PyTorch picks the fastest fused kernel
(flash / memory-efficient / math) for the device, except where `kernels.attention_kernel` knows a fused
kernel is slow on a GPU: there it is two GEMMs and a softmax. A cross-attention multiplies its projection
weights on whichever side is narrower (`absorption.py`). Shapes: B batch, Q queries, K keys, H heads.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from perceiver_mt.model import grid_attention
from perceiver_mt.model.absorption import PROJECTED, AttentionPlan, attention_plan
from perceiver_mt.model.grid_tokens import GridPoints, GridTokens
from perceiver_mt.model.kernels import attention_kernel, check_kernel, finite_or_zero, matmul_attention, query_groups


def padding_to_attention_mask(pad_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, K) bool, True = padding  ->  (B, 1, 1, K) bool, True = may attend (SDPA's convention)."""
    if pad_mask is None:
        return None
    return (~pad_mask)[:, None, None, :]


def equal_head_widths(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero channels appended to the narrower of (q, k) and v: PyTorch's CPU flash attention takes only equal
    widths and otherwise falls back to a kernel that materialises every score. Zero channels change no
    score, and zero value channels only add output channels to drop; the caller keeps v's width."""
    extra = q.shape[-1] - v.shape[-1]
    if extra > 0:
        return q, k, F.pad(v, (0, extra))
    if extra < 0:
        return F.pad(q, (0, -extra)), F.pad(k, (0, -extra)), v
    return q, k, v


# Latents attend to GridTokens per axis (grid_attention.py) when their plan attends to the inputs themselves.
GRID_KEYS = AttentionPlan("absorb_keys", "absorb_values")


class KeysValues(NamedTuple):
    """Keys (B, H, K, Cqk') and values (B, H, K, Cv') prepared once for any number of query chunks, in `plan`'s order."""

    k: torch.Tensor
    v: torch.Tensor
    plan: AttentionPlan


class MultiHeadAttention(nn.Module):
    """Multi-head attention whose queries and keys/values may have different channel counts.

    `qk_channels` and `v_channels` are the total widths over all heads; each must divide by `num_heads`.
    A cross-attention multiplies its projections in the order with the fewest FLOPs for its shapes
    (`absorption.attention_plan`): the same function of the same parameters.
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
        self.plan: AttentionPlan | None = None  # None = the cheapest order for the shapes; set to pin one
        self.to_q = nn.Linear(q_channels, qk_channels)
        self.to_k = nn.Linear(kv_channels, qk_channels)
        self.to_v = nn.Linear(kv_channels, v_channels)
        self.to_out = nn.Linear(v_channels, out_channels)

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x_q: (B, Q, Cq), x_kv: (B, K, Ckv), pad_mask: (B, K) True = ignore this key  ->  (B, Q, Cout)."""
        if x_q is x_kv:  # self-attention: one GEMM for q, k and v; absorbing never pays at equal widths
            q, k, v = (self._split_heads(t) for t in self._project(x_q, self.to_q, self.to_k, self.to_v))
            return self._outputs(self._attend(q, k, v, pad_mask), PROJECTED)
        return self.attend(x_q, self.keys_values(x_kv, x_q.shape[1]), pad_mask)

    def keys_values(self, x_kv: torch.Tensor, num_queries: int) -> KeysValues:
        """Keys and values of x_kv (B, K, Ckv) for `num_queries` queries in all (which decides the plan)."""
        plan = self.plan_for(num_queries, x_kv.shape[1])
        return KeysValues(*self._keys_values(x_kv, plan), plan)

    def attend(self, x_q: torch.Tensor, kv: KeysValues, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x_q: (B, Q, Cq) attending to prepared keys/values  ->  (B, Q, Cout)."""
        return self._outputs(self._attend(self._queries(x_q, kv.plan), kv.k, kv.v, pad_mask), kv.plan)

    def attend_to_grid(self, x_q: torch.Tensor, tokens: GridTokens, norm: nn.LayerNorm) -> torch.Tensor:
        """`attend(x_q, keys_values(norm(tokens)))` in the GRID_KEYS order, the grid left unexpanded."""
        q = self._queries(x_q, GRID_KEYS)  # (B, H, Q, Ckv)
        return self._outputs(grid_attention.queries_attend_to_grid(q, tokens, norm, self._scale), GRID_KEYS)

    def grid_attend(self, tokens: GridTokens, norm: nn.LayerNorm, kv: KeysValues) -> torch.Tensor:
        """`attend(norm(tokens), kv)` for keys prepared in a queries-absorbed plan, the grid left unexpanded."""
        return self._outputs(grid_attention.grid_attends_to_keys(tokens, norm, kv.k, kv.v, self._scale), kv.plan)

    def plan_for(self, num_queries: int, num_keys: int) -> AttentionPlan:
        if self.plan is not None:
            return self.plan
        if self.dropout and self.training:
            return PROJECTED  # dropped-out probabilities no longer sum to one, which absorbing the biases needs
        return attention_plan(
            num_queries, num_keys, self.to_q.in_features, self.to_k.in_features, self.to_q.out_features,
            self.to_v.out_features, self.to_out.out_features, self.num_heads,
        )

    @property
    def _scale(self) -> float:
        return (self.to_q.out_features // self.num_heads) ** -0.5  # the projected head width, whatever the order

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)  # (B, H, T, C/H)

    def _per_head(self, linear: nn.Linear) -> torch.Tensor:
        """A projection's weight as (H, C/H, fan_in): head h's rows."""
        return linear.weight.view(self.num_heads, -1, linear.in_features)

    def _queries(self, x_q: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
        B, Q, _ = x_q.shape
        if plan.scores == "absorb_queries":  # the constant channel carries q's bias into the keys
            q = torch.cat([x_q, x_q.new_ones(B, Q, 1)], dim=-1)
            return q[:, None].expand(B, self.num_heads, Q, -1)  # (B, H, Q, Cq + 1): one copy for all heads
        q = self._split_heads(self.to_q(x_q))  # (B, H, Q, Cqk/H)
        if plan.scores == "absorb_keys":
            # k's bias shifts every score of a query alike, which softmax ignores: its gradient is zero in any
            # order. It joins the graph with weight zero so DDP, which needs every parameter used, sees it.
            q = q @ self._per_head(self.to_k) + 0.0 * self.to_k.bias.sum()  # (B, H, Q, Ckv)
        return q

    def _keys_values(self, x_kv: torch.Tensor, plan: AttentionPlan) -> tuple[torch.Tensor, torch.Tensor]:
        B, K, _ = x_kv.shape
        inputs = x_kv[:, None].expand(B, self.num_heads, K, -1)  # (B, H, K, Ckv): one copy for all heads
        project_k, project_v = plan.scores != "absorb_keys", plan.values != "absorb_values"
        if project_k and project_v:
            k, v = (self._split_heads(t) for t in self._project(x_kv, self.to_k, self.to_v))
        else:
            k = self._split_heads(self.to_k(x_kv)) if project_k else inputs
            v = self._split_heads(self.to_v(x_kv)) if project_v else inputs
        if plan.scores == "absorb_queries":
            q_weight, q_bias = self._per_head(self.to_q), self.to_q.bias.view(self.num_heads, -1, 1)
            k = torch.cat([k @ q_weight, k @ q_bias], dim=-1)  # (B, H, K, Cq + 1)
        if plan.values == "absorb_outputs":
            out_weight = self.to_out.weight.view(self.to_out.out_features, self.num_heads, -1).permute(1, 2, 0)
            v = v @ out_weight  # (B, H, K, Cout): head h's share of the output projection
            # Probabilities sum to one, so the output bias rides on the first head's values: no pass over the
            # (B, Q, Cout) outputs to add it. In v's dtype, as autocast's linear adds its bias.
            first_head = F.pad(self.to_out.bias[None, None], (0, 0, 0, 0, 0, self.num_heads - 1))  # (H, 1, Cout)
            v = v + first_head.to(v.dtype)
        return k, v

    @staticmethod
    def _project(x: torch.Tensor, *projections: nn.Linear) -> tuple[torch.Tensor, ...]:
        """Several projections of one input in one GEMM: one wide GEMM beats two or three narrow ones, and the
        concatenated weight is a copy of weights, not of activations."""
        weight = torch.cat([p.weight for p in projections])
        bias = torch.cat([p.bias for p in projections])
        return F.linear(x, weight, bias).split([p.out_features for p in projections], dim=-1)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """(B, H, Q, Cqk'), (B, H, K, Cqk'), (B, H, K, Cv')  ->  (B, H, Q, Cv')."""
        B, H, Q, _ = q.shape
        groups = query_groups(q, k)
        if groups > 1:  # query blocks become extra heads; each sees every key, so results are unchanged
            q = q.reshape(B, H * groups, Q // groups, -1)
            k, v = (t.unsqueeze(2).expand(B, H, groups, *t.shape[2:]).flatten(1, 2) for t in (k, v))
        attend = matmul_attention if attention_kernel(q, k, self.kernel) == "matmul" else F.scaled_dot_product_attention
        width = v.shape[-1]
        if attend is F.scaled_dot_product_attention and q.device.type == "cpu":
            q, k, v = equal_head_widths(q, k, v)
        out = attend(
            q, k, v,
            attn_mask=padding_to_attention_mask(pad_mask),
            dropout_p=self.dropout if self.training else 0.0,
            scale=self._scale,
        )  # (B, H * groups, Q / groups, Cv')
        return out[..., :width].reshape(B, H, Q, -1)

    def _outputs(self, out: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
        """(B, H, Q, Cv') in `plan`'s order  ->  (B, Q, Cout)."""
        B, H, Q, _ = out.shape
        if plan.values == "absorb_outputs":  # every head's values already carry its output projection and bias
            return out[:, 0] if H == 1 else out.sum(dim=1)
        if plan.values == "absorb_values":  # probabilities sum to one, so v's bias passes through unchanged
            out = out @ self._per_head(self.to_v).transpose(1, 2) + self.to_v.bias.view(H, 1, -1)  # (B, H, Q, Cv/H)
        return self.to_out(out.transpose(1, 2).reshape(B, Q, -1))

    def forward_in_chunks(
        self,
        x_q: torch.Tensor,
        x_kv: torch.Tensor | GridTokens,
        kv_transform: nn.Module,
        chunk_size: int,
        pad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """As `forward(x_q, kv_transform(x_kv), pad_mask)`, walking the keys `chunk_size` at a time.

        Each chunk's normalised inputs, keys, values and scores are recomputed in backward, so training
        holds one chunk's worth of them rather than all: the way to cross-attend to inputs whose keys
        and values would not fit in memory. Chunks are combined exactly through their log-sum-exps.
        """
        plan = self.plan_for(x_q.shape[1], x_kv.shape[1])
        q = self._queries(x_q, plan) * self._scale
        dropout = self.dropout if self.training else 0.0
        outs, lses = [], []
        for start in range(0, x_kv.shape[1], chunk_size):
            chunk = input_points(x_kv, start, min(start + chunk_size, x_kv.shape[1]))
            mask = None if pad_mask is None else pad_mask[:, start:start + chunk_size]
            args = (q, chunk, kv_transform, mask, dropout, plan)
            out, lse = (checkpoint(self._attend_chunk, *args, use_reentrant=False) if torch.is_grad_enabled()
                        else self._attend_chunk(*args))
            outs.append(out)
            lses.append(lse)
        lse = finite_or_zero(torch.stack(lses).logsumexp(dim=0))  # (B, H, Q)
        out = sum(o * (l - lse).exp().unsqueeze(-1) for o, l in zip(outs, lses))  # (B, H, Q, Cv')
        return self._outputs(out, plan)

    def _attend_chunk(
        self, q: torch.Tensor, x_kv: torch.Tensor | GridPoints, kv_transform: nn.Module,
        pad_mask: torch.Tensor | None, dropout: float, plan: AttentionPlan,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention of scaled q to one chunk of keys: (output normalised within the chunk, log-sum-exp)."""
        # Grid points expand here, so that backward recomputes rather than keeps them.
        k, v = self._keys_values(kv_transform(materialized(x_kv)), plan)
        scores = q @ k.transpose(-2, -1)  # (B, H, Q, chunk)
        if pad_mask is not None:
            scores = scores.masked_fill(pad_mask[:, None, None, :], float("-inf"))
        lse = scores.logsumexp(dim=-1)  # -inf where the whole chunk is padding: its weight below is 0
        probs = (scores - finite_or_zero(lse).unsqueeze(-1)).exp()
        return F.dropout(probs, dropout) @ v if dropout else probs @ v, lse


def set_attention_kernel(module: nn.Module, kernel: str) -> None:
    """Every attention inside `module` uses `kernel`: "auto" (per device and shape), "fused" (SDPA;
    least memory) or "matmul" (two GEMMs; on some GPU shapes faster, storing the scores)."""
    check_kernel(kernel)
    for attention in module.modules():
        if isinstance(attention, MultiHeadAttention):
            attention.kernel = kernel


def pin_attention_plan(module: nn.Module, plan: AttentionPlan | None) -> None:
    """Every attention inside `module` multiplies its projections in `plan`'s order (`absorption.PROJECTED`:
    as the reference implementations do); None restores the cheapest order per shape."""
    for attention in module.modules():
        if isinstance(attention, MultiHeadAttention):
            attention.plan = plan


def materialized(x: torch.Tensor | GridTokens | GridPoints) -> torch.Tensor:
    return x.materialize() if isinstance(x, (GridTokens, GridPoints)) else x


def input_points(x: torch.Tensor | GridTokens, start: int, stop: int) -> torch.Tensor | GridPoints:
    """Points [start, stop) of the inputs: a view, or GridPoints expanded only where used."""
    return GridPoints(x, start, stop) if isinstance(x, GridTokens) else x[:, start:stop]


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

    def forward(
        self, x_q: torch.Tensor, x_kv: torch.Tensor | GridTokens, pad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if (pad_mask is None and self._grid_path(x_kv, x_q)
                and self.attention.plan_for(x_q.shape[1], x_kv.shape[1]) == GRID_KEYS):
            return self._finish(x_q, self.attention.attend_to_grid(self.q_norm(x_q), x_kv, self.kv_norm))
        if self.kv_chunk_size is not None and x_kv.shape[1] > self.kv_chunk_size:
            attended = self.attention.forward_in_chunks(self.q_norm(x_q), x_kv, self.kv_norm, self.kv_chunk_size,
                                                        pad_mask)
            return self._finish(x_q, attended)
        x_kv = materialized(x_kv)
        return self.attend(x_q, self.keys_values(x_kv, x_q.shape[1]), pad_mask)

    def keys_values(self, x_kv: torch.Tensor, num_queries: int) -> KeysValues:
        """The keys and values of x_kv, computed once for `num_queries` queries attending in any number of calls."""
        return self.attention.keys_values(self.kv_norm(x_kv), num_queries)

    def attend(
        self, x_q: torch.Tensor | GridTokens | GridPoints, kv: KeysValues, pad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if pad_mask is None and kv.plan.scores == "absorb_queries" and self._grid_path(x_q, kv.k, kv.v):
            return self._finish(x_q, self.attention.grid_attend(x_q, self.q_norm, kv))
        x_q = materialized(x_q)
        return self._finish(x_q, self.attention.attend(self.q_norm(x_q), kv, pad_mask))

    def _grid_path(self, tokens: torch.Tensor | GridTokens, *others: torch.Tensor) -> bool:
        dropping = self.training and self.attention.dropout > 0
        return not dropping and grid_attention.applies(tokens, self, *others)

    def _finish(self, x_q: torch.Tensor | GridTokens, attended: torch.Tensor) -> torch.Tensor:
        x = materialized(x_q) + attended if self.query_residual else attended
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
