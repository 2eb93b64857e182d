"""Faster versions of the reference cross-attention layer, decoder and task model (same parameters).

- `FastCrossAttentionLayer`: keys and values prepared once for several query chunks; GridTokens attended
  per axis at inference; inputs walked `input_chunk_size` at a time with per-chunk recompute.
- `ChunkedDecoder` / `ChunkedTaskModel`: queries decoded `query_chunk_size` at a time with the task's head
  run per chunk, so per-query outputs (pixels, tokens) never hold the (B, O, Cq) features of all queries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from perceiver_mt.model.attention import CrossAttentionLayer
from perceiver_mt.model.multitask import TaskModel
from perceiver_mt.model.perceiver import PerceiverDecoder
from perceiver_mt.speed import grid_attention
from perceiver_mt.speed.attention import GRID_KEYS, FastAttention, KeysValues, materialized
from perceiver_mt.speed.grid_tokens import GridPoints, GridTokens

if TYPE_CHECKING:
    from perceiver_mt.task import Batch


class FastCrossAttentionLayer(CrossAttentionLayer):
    """`CrossAttentionLayer` over a `FastAttention`, taking GridTokens on either side."""

    attention: FastAttention
    input_chunk_size: int | None = None  # walk the inputs this many at a time, each chunk recomputed in backward

    def forward(
        self, x_q: torch.Tensor | GridTokens, x_kv: torch.Tensor | GridTokens, pad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if (pad_mask is None and self._grid_path(x_kv, x_q)
                and self.attention.plan_for(x_q.shape[1], x_kv.shape[1]) == GRID_KEYS):
            return self._finish(x_q, self.attention.attend_to_grid(self.q_norm(x_q), x_kv, self.kv_norm))
        if self.input_chunk_size is not None and x_kv.shape[1] > self.input_chunk_size:
            attended = self.attention.forward_in_chunks(self.q_norm(materialized(x_q)), x_kv, self.kv_norm,
                                                        self.input_chunk_size, pad_mask)
            return self._finish(x_q, attended)
        return self.attend(x_q, self.keys_values(materialized(x_kv), x_q.shape[1]), pad_mask)

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

    def _finish(self, x_q: torch.Tensor | GridTokens | GridPoints, attended: torch.Tensor) -> torch.Tensor:
        x = materialized(x_q) + attended if self.query_residual else attended
        return x + self.mlp(x)


class ChunkedDecoder(PerceiverDecoder):
    """`PerceiverDecoder` decoding `query_chunk_size` queries at a time, with an optional per-query `head`."""

    cross_attention: FastCrossAttentionLayer
    query_chunk_size: int | None = None
    # Recompute each chunk in backward: set by `parallel.activation_checkpointing`, which checkpoints this
    # decoder per chunk rather than as a whole (a whole-decoder checkpoint would recompute all chunks at once).
    checkpoint_chunks: bool = False

    def forward(
        self, queries: torch.Tensor | GridTokens, latents: torch.Tensor, head: nn.Module | None = None,
    ) -> torch.Tensor:
        """queries: (B, O, Cq), latents: (B, N, D)  ->  (B, O, Cq), or `head` of that, computed per chunk.

        The chunks' results are concatenated along dim 1, so `head` must map queries independently.
        """
        chunk = self.query_chunk_size or queries.shape[1]
        # Keys and values once for all queries; queries are independent of each other, so chunking changes
        # memory, not results. Without checkpointing, autograd still keeps every chunk's activations; the
        # two go together for per-pixel outputs whose (O x D) activations would not fit at once.
        kv = self.cross_attention.keys_values(latents, queries.shape[1])
        outputs = [self._call(part, kv, head) for part in queries.split(chunk, dim=1)]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)

    def _call(self, queries: torch.Tensor | GridTokens, kv: KeysValues, head: nn.Module | None) -> torch.Tensor:
        if self.checkpoint_chunks and torch.is_grad_enabled():
            return checkpoint(self._decode, queries, kv, head, use_reentrant=False)
        return self._decode(queries, kv, head)

    def _decode(self, queries: torch.Tensor | GridTokens, kv: KeysValues, head: nn.Module | None) -> torch.Tensor:
        decoded = self.cross_attention.attend(queries, kv)
        return decoded if head is None else head(decoded)


class ChunkedTaskModel(TaskModel):
    """`TaskModel` whose head runs inside each chunk of its `ChunkedDecoder`."""

    decoder: ChunkedDecoder

    def decode(self, batch: Batch, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.queries(batch), latents, head=self.head)
