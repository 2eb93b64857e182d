"""Cross-attention between a few queries/keys and layer-normalised GridTokens, with position channels per axis.

With LN(x) = (x - mean) * rstd * gamma + beta, a score against token x with weight vector g is
rstd * (x . (g * gamma) - mean * sum(g * gamma)) + beta . g, and x . w = content . w_c + sum_a tables[a][i_a] . w_p.
So each weight vector meets the content channels plus the token's mean in one GEMM of Cc + 1 columns, and the
position channels in one small (axis size x queries) table per axis added on the grid. Likewise a weighted
sum of LN(x) over the tokens needs the content GEMM and, per axis, the weights summed over the other axes.
Exact (up to float rounding) and inference-only: training keeps the fused kernels, which store no scores.

Shapes: B batch, H heads, L latent side (queries of the encoder, keys of a decoder), M grid points.
"""

from __future__ import annotations

import torch
from torch import nn

from perceiver_mt.model.grid_tokens import GridTokens, on_grid

# Scores are materialised this many at a time (per batch x head): big enough for efficient GEMMs, small
# enough to stay in cache between the passes over them.
SCORE_CHUNK = 2**22


def applies(tokens: object, *modules: nn.Module) -> bool:
    """Whether `tokens` can take the per-axis path here: GridTokens, no gradients wanted, no autocast."""
    if not isinstance(tokens, GridTokens) or torch.is_autocast_enabled(tokens.content.device.type):
        return False
    if not torch.is_grad_enabled():
        return True
    return not tokens.content.requires_grad and not any(p.requires_grad for m in modules for p in m.parameters())


def queries_attend_to_grid(q: torch.Tensor, tokens: GridTokens, norm: nn.LayerNorm, scale: float) -> torch.Tensor:
    """softmax(scale * q . LN(x)) over the tokens, times LN(x): q (B, H, L, C)  ->  (B, H, L, C).

    Used for latents whose queries absorbed the key projection (`absorption.py`, "absorb_keys").
    """
    B, H, L, C = q.shape
    Cc, grid = tokens.content_channels, tokens.grid
    content, rstd = tokens.centring(norm.eps)  # [content, -mean] (B, M, Cc + 1), (B, M)
    g = q * (norm.weight * scale)  # beta . g is the same for every token of a query: softmax drops it
    g_content = torch.cat([g[..., :Cc], g.sum(-1, keepdim=True)], dim=-1)  # (B, H, L, Cc + 1)
    axis_scores = [g[..., Cc:] @ t.T for t in tokens.tables]  # (B, H, L, n_a)
    content, rstd = content.unsqueeze(1), rstd[:, None, None, :]  # (B, 1, M, Cc + 1), (B, 1, 1, M)
    chunk = max(1, SCORE_CHUNK // tokens.content.shape[1])
    outs = []
    for start in range(0, L, chunk):
        part = slice(start, start + chunk)
        scores = (g_content[:, :, part] @ content.transpose(-1, -2))  # (B, H, l, M)
        on_points = scores.view(*scores.shape[:3], *grid)
        for a, table in enumerate(axis_scores):
            on_points += on_grid(table[:, :, part], (a,), len(grid), lead=3)
        weights = scores.mul_(rstd).softmax(dim=-1).mul_(rstd)  # probabilities times each token's rstd
        summed = weights @ content  # (B, H, l, Cc + 1): [sum p rstd content, -sum p rstd mean]
        on_points = weights.view(*weights.shape[:3], *grid)
        others = lambda a: tuple(3 + b for b in range(len(grid)) if b != a)  # noqa: E731
        positions = sum(on_points.sum(others(a)) @ t for a, t in enumerate(tokens.tables))  # (B, H, l, Cp)
        centred = torch.cat([summed[..., :Cc], positions], dim=-1) + summed[..., Cc:]
        outs.append(centred * norm.weight + norm.bias)  # probabilities sum to one: beta passes through
    return torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]


def grid_attends_to_keys(
    tokens: GridTokens, norm: nn.LayerNorm, k: torch.Tensor, v: torch.Tensor, scale: float,
) -> torch.Tensor:
    """softmax over keys of scale * [LN(x), 1] . k, times v: k (B, H, L, C + 1), v (B, H, L, Cv)  ->  (B, H, M, Cv).

    Used for grid queries whose keys absorbed the query projection and q's bias ("absorb_queries").
    """
    Cc, grid = tokens.content_channels, tokens.grid
    content, rstd = tokens.centring(norm.eps)  # [content, -mean] (B, M, Cc + 1), (B, M)
    h = k[..., :-1] * (norm.weight * scale)  # (B, H, L, C)
    h_content = torch.cat([h[..., :Cc], h.sum(-1, keepdim=True)], dim=-1)  # (B, H, L, Cc + 1)
    key_bias = (k[..., :-1] @ norm.bias + k[..., -1]) * scale  # (B, H, L): beta's and q's bias terms
    axis_scores = [t @ h[..., Cc:].transpose(-1, -2) for t in tokens.tables]  # (B, H, n_a, L)
    content = content.unsqueeze(1)  # (B, 1, M, Cc + 1)
    per_row = tokens.content.shape[1] // grid[0]
    rows = max(1, SCORE_CHUNK // (per_row * k.shape[2]))
    outs = []
    for start in range(0, grid[0], rows):
        stop = min(start + rows, grid[0])
        points = slice(start * per_row, stop * per_row)
        scores = content[:, :, points] @ h_content.transpose(-1, -2)  # (B, H, m, L)
        on_points = scores.view(*scores.shape[:2], stop - start, *grid[1:], -1)
        for a, table in enumerate(axis_scores):
            on_points += on_grid(table[:, :, start:stop] if a == 0 else table, (a,), len(grid), lead=2)
        scores.mul_(rstd[:, None, points, None]).add_(key_bias.unsqueeze(2))
        outs.append(scores.softmax(dim=-1) @ v)  # (B, H, m, Cv)
    return torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
