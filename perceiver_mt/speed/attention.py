"""`FastAttention`: the reference `MultiHeadAttention` (same parameters, same function), computed faster.

- Projection order (`absorption.py`): a cross-attention multiplies its projection weights on whichever side
  is narrower, so e.g. latents attend to 322-channel inputs whose keys and values are never made.
- Kernel choice (`kernels.py`): PyTorch's fused kernels (SDPA) or two GEMMs and a softmax, per device and
  shape; on CPU, query blocks folded into extra heads so that backward uses every thread; zero channels that
  keep SDPA on a fused kernel where head widths miss its constraints (CPU flash: q/k and v of one width;
  CUDA, with `pad_heads`: widths in multiples of 8, one width up to 256 for flash).
- Keys and values prepared once (`keys_values`) for any number of query chunks (`attend`); inputs walked in
  chunks with a running log-sum-exp, each recomputed in backward (`forward_in_chunks`); GridTokens attended
  per axis (`attend_to_grid`, `grid_attend`, see `grid_attention.py`).

Shapes: B batch, Q queries, K keys, H heads; a primed width (Cqk') is the width in the plan's order.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from perceiver_mt.model.attention import MultiHeadAttention
from perceiver_mt.speed import grid_attention
from perceiver_mt.speed.absorption import PROJECTED, AttentionPlan, attention_plan
from perceiver_mt.speed.grid_tokens import GridPoints, GridTokens
from perceiver_mt.speed.kernels import (
    attention_kernel, finite_or_zero, fused_head_widths, matmul_attention, query_groups,
)

# Latents attend to GridTokens per axis (grid_attention.py) when their plan attends to the inputs themselves.
GRID_KEYS = AttentionPlan("absorb_keys", "absorb_values")


class KeysValues(NamedTuple):
    """Keys (B, H, K, Cqk') and values (B, H, K, Cv') in `plan`'s order, prepared once for any number of query chunks."""

    k: torch.Tensor
    v: torch.Tensor
    plan: AttentionPlan


class FastAttention(MultiHeadAttention):
    """`MultiHeadAttention` in the projection order with the fewest FLOPs and the kernel that suits the shapes.

    Made from a built `MultiHeadAttention` by changing its class (`speed.seam.swap_modules`): nothing is
    added but the two settings below.
    """

    kernel: str = "auto"  # auto | fused | matmul: see kernels.attention_kernel
    plan: AttentionPlan | None = None  # None = the cheapest order for the shapes; set to pin one
    pad_heads: bool = False  # CUDA: zero channels where SDPA's fused kernels need them (kernels.fused_head_widths)

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        if x_q is x_kv:  # self-attention: one GEMM for q, k and v; absorbing never pays at equal widths
            q, k, v = (self.split_heads(t) for t in self._project(x_q, self.to_q, self.to_k, self.to_v))
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

    # --- the pieces -----------------------------------------------------------------------------------------

    @property
    def _scale(self) -> float:
        return (self.to_q.out_features // self.num_heads) ** -0.5  # the projected head width, whatever the order

    def _per_head(self, linear: nn.Linear) -> torch.Tensor:
        """A projection's weight as (H, C/H, fan_in): head h's rows."""
        return linear.weight.view(self.num_heads, -1, linear.in_features)

    def _queries(self, x_q: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
        B, Q, _ = x_q.shape
        if plan.scores == "absorb_queries":  # the constant channel carries q's bias into the keys
            q = torch.cat([x_q, x_q.new_ones(B, Q, 1)], dim=-1)
            return q[:, None].expand(B, self.num_heads, Q, -1)  # (B, H, Q, Cq + 1): one copy for all heads
        q = self.split_heads(self.to_q(x_q))  # (B, H, Q, Cqk/H)
        if plan.scores == "absorb_keys":
            # k's bias shifts every score of a query alike, which softmax ignores: its gradient is zero in any
            # order. It joins with weight zero so that it gets that gradient, as in the reference: without one,
            # the optimizer would keep no state for it (sharded checkpoints then miss it) and DDP would wait for it.
            q = q @ self._per_head(self.to_k) + 0.0 * self.to_k.bias.sum()  # (B, H, Q, Ckv)
        return q

    def _keys_values(self, x_kv: torch.Tensor, plan: AttentionPlan) -> tuple[torch.Tensor, torch.Tensor]:
        B, K, _ = x_kv.shape
        inputs = x_kv[:, None].expand(B, self.num_heads, K, -1)  # (B, H, K, Ckv): one copy for all heads
        project_k, project_v = plan.scores != "absorb_keys", plan.values != "absorb_values"
        if project_k and project_v:
            k, v = (self.split_heads(t) for t in self._project(x_kv, self.to_k, self.to_v))
        else:
            k = self.split_heads(self.to_k(x_kv)) if project_k else inputs
            v = self.split_heads(self.to_v(x_kv)) if project_v else inputs
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
        if attend is F.scaled_dot_product_attention and (q.device.type == "cpu" or self.pad_heads):
            q, k, v = fused_head_widths(q, k, v, q.device.type)  # zero channels: widths the fused kernels take
        out = attend(
            q, k, v,
            attn_mask=None if pad_mask is None else ~pad_mask[:, None, None, :],
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


def materialized(x: torch.Tensor | GridTokens | GridPoints) -> torch.Tensor:
    return x.materialize() if isinstance(x, (GridTokens, GridPoints)) else x


def input_points(x: torch.Tensor | GridTokens, start: int, stop: int) -> torch.Tensor | GridPoints:
    """Points [start, stop) of the inputs: a view, or GridPoints expanded only where used."""
    return GridPoints(x, start, stop) if isinstance(x, GridTokens) else x[:, start:stop]
