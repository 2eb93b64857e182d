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

from perceiver_mt.speed.grid_tokens import GridTokens, on_grid

# Scores are materialised this many at a time (per batch x head): big enough for efficient GEMMs, small
# enough to stay in cache between the passes over them.
SCORE_CHUNK = 2**22


def applies(tokens: object, module: nn.Module, *tensors: torch.Tensor) -> bool:
    """Whether `tokens` can take the per-axis path in `module` with these other inputs: GridTokens, no autocast,
    and no gradient wanted for anything involved (the path overwrites its scores in place)."""
    if not isinstance(tokens, GridTokens) or torch.is_autocast_enabled(tokens.content.device.type):
        return False
    if not torch.is_grad_enabled():
        return True
    return not any(t.requires_grad for t in (tokens.content, *tensors, *module.parameters()))


def queries_attend_to_grid(q: torch.Tensor, tokens: GridTokens, norm: nn.LayerNorm, scale: float) -> torch.Tensor:
    """softmax(scale * q . LN(x)) over the tokens, times LN(x): q (B, H, L, C)  ->  (B, H, L, C).

    Used for latents whose queries absorbed the key projection (`absorption.py`, "absorb_keys"). Walks the grid
    a few rows at a time with a running softmax (as flash attention does), so each chunk's scores are one
    GEMM of all queries against the chunk's tokens: far faster than a few queries against every token.
    """
    B, H, L, C = q.shape
    Cc, grid = tokens.content_channels, tokens.grid
    content, rstd = tokens.centring(norm.eps)  # [content, -mean] (B, M, Cc + 1), (B, M)
    g = q * (norm.weight * scale)  # beta . g is the same for every token of a query: softmax drops it
    g_content = torch.cat([g[..., :Cc], g.sum(-1, keepdim=True)], dim=-1).transpose(-1, -2)  # (B, H, Cc + 1, L)
    axis_scores = [t @ g[..., Cc:].transpose(-1, -2) for t in tokens.tables]  # (B, H, n_a, L)
    content = content.unsqueeze(1)  # (B, 1, M, Cc + 1)
    running_max = q.new_full((B, H, 1, L), float("-inf"))
    total = q.new_zeros(B, H, 1, L)  # sum of exp(score - running_max) over the tokens so far
    summed = q.new_zeros(B, H, L, Cc + 1)  # sum of the same times rstd times [content, -mean]
    axis_sums = [q.new_zeros(B, H, n, L) for n in grid]  # ... times rstd, summed over every other axis
    for start, stop, points in _row_chunks(tokens, L):
        scores = _scores_on_rows(content[:, :, points], g_content, axis_scores, start, stop, grid)  # (B, H, m, L)
        scores.mul_(rstd[:, None, points, None])
        new_max = torch.maximum(running_max, scores.amax(dim=2, keepdim=True))
        rescale = (running_max - new_max).exp()  # what the sums so far are worth against the new maximum
        running_max = new_max
        weights = scores.sub_(new_max).exp_()
        total = total * rescale + weights.sum(dim=2, keepdim=True)
        weights.mul_(rstd[:, None, points, None])
        summed = summed * rescale.transpose(-1, -2) + weights.transpose(-1, -2) @ content[:, :, points]
        on_points = weights.view(B, H, stop - start, *grid[1:], L)
        for a in range(len(grid)):
            others = tuple(2 + b for b in range(len(grid)) if b != a)
            part = on_points.sum(others) if others else on_points
            axis_sums[a].mul_(rescale)
            if a == 0:
                axis_sums[a][:, :, start:stop] += part
            else:
                axis_sums[a] += part
    summed = summed / total.transpose(-1, -2)  # (B, H, L, Cc + 1): [sum p rstd content, -sum p rstd mean]
    positions = sum((s / total).transpose(-1, -2) @ t for s, t in zip(axis_sums, tokens.tables))  # (B, H, L, Cp)
    centred = torch.cat([summed[..., :Cc], positions], dim=-1) + summed[..., Cc:]
    return centred * norm.weight + norm.bias  # probabilities sum to one: beta passes through


def _row_chunks(tokens: GridTokens, width: int):
    """(first row, end row, slice of points) of chunks of whole rows whose scores against `width` vectors
    fit in SCORE_CHUNK."""
    rows, per_row = tokens.grid[0], tokens.content.shape[1] // tokens.grid[0]
    step = max(1, SCORE_CHUNK // (per_row * width))
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        yield start, stop, slice(start * per_row, stop * per_row)


def _scores_on_rows(
    content: torch.Tensor, weights: torch.Tensor, axis_scores: list[torch.Tensor], start: int, stop: int,
    grid: tuple[int, ...],
) -> torch.Tensor:
    """Unnormalised scores of rows [start, stop): content (B, 1, m, Cc + 1) @ weights (B, H, Cc + 1, L) plus each
    axis's table (B, H, n_a, L) added on the grid  ->  (B, H, m, L)."""
    scores = content @ weights
    on_points = scores.view(*scores.shape[:2], stop - start, *grid[1:], -1)
    for a, table in enumerate(axis_scores):
        on_points += on_grid(table[:, :, start:stop] if a == 0 else table, (a,), len(grid), lead=2)
    return scores


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
    outs = []
    for start, stop, points in _row_chunks(tokens, k.shape[2]):
        scores = _scores_on_rows(content[:, :, points], h_content.transpose(-1, -2), axis_scores, start, stop, grid)
        scores.mul_(rstd[:, None, points, None]).add_(key_bias.unsqueeze(2))
        outs.append(scores.softmax(dim=-1) @ v)  # (B, H, m, Cv)
    return torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
