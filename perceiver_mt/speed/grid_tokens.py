"""Tokens on a grid whose position features are a sum of one table per axis, kept unexpanded.

Per-pixel Perceivers (optical flow) feed one token per pixel: [content | position features], e.g. 64
projected patch channels and 258 Fourier channels for each of 182,528 pixels. Every Fourier channel depends
on one axis only, so the position block of pixel (i, j) is rows[i] + columns[j] of two small tables. Kept
that way, a LayerNorm's statistics and every dot product with a weight vector cost per axis instead of per
token for the position channels: `grid_attention` cross-attends between latents and such tokens multiplying
the content channels only. Anything else calls `materialize()` for the ordinary (B, M, C) tensor.

With `speed.grid_tokens`, every `ConcatFourierPositions` of a model becomes a `GridFourierPositions`, which
returns GridTokens; they pass through `PerceiverEncoder` / `PerceiverDecoder` (which only read `.shape`) to
the cross-attention layers of `speed/layers.py`, which take them. So such a module's output must go to the
encoder or decoder as it is (an adapter's or a query module's last step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import torch

from perceiver_mt.model.position import (
    ConcatFourierPositions, FourierPositionEncoding, fourier_features, linear_positions,
)


@dataclass(frozen=True, eq=False)  # identity semantics: fields are tensors
class GridTokens:
    """(B, M, Cc + Cp) tokens: `content` (B, M, Cc) followed by position features sum_a tables[a][i_a].

    M = prod(grid) points in row-major order; table a is (grid[a], Cp). Tables may share channels (a learned
    row embedding plus a column embedding) or own disjoint ones (Fourier features).
    """

    content: torch.Tensor
    tables: tuple[torch.Tensor, ...]
    _normalizations: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.content.dim() != 3:
            raise ValueError("GridTokens content must be (batch, points, channels), got shape "
                             f"{tuple(self.content.shape)}")
        widths = {t.shape[-1] for t in self.tables}
        if not self.tables or len(widths) != 1 or any(t.dim() != 2 for t in self.tables):
            raise ValueError("GridTokens needs one or more (axis size, channels) tables of one width, got shapes "
                             f"{[tuple(t.shape) for t in self.tables]}")
        if math.prod(self.grid) != self.content.shape[1]:
            raise ValueError(f"GridTokens content has {self.content.shape[1]} points but the grid {self.grid} has "
                             f"{math.prod(self.grid)}")

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(t.shape[0] for t in self.tables)

    @property
    def content_channels(self) -> int:
        return self.content.shape[-1]

    @property
    def shape(self) -> torch.Size:
        B, M, Cc = self.content.shape
        return torch.Size((B, M, Cc + self.tables[0].shape[-1]))

    def positions(self) -> torch.Tensor:
        """The position block of every point: (M, Cp)."""
        return grid_positions(self.tables)

    def materialize(self) -> torch.Tensor:
        """The (B, M, C) tensor, built once and shared by every layer that needs it (an encoder and a decoder)."""
        return self._materialized

    @property
    def is_materialized(self) -> bool:
        return "_materialized" in self.__dict__

    @cached_property
    def _materialized(self) -> torch.Tensor:
        B = self.content.shape[0]
        return torch.cat([self.content, self.positions().expand(B, -1, -1)], dim=-1)  # (B, M, C)

    def rows(self, start: int, stop: int) -> GridTokens:
        """Points whose first grid index is in [start, stop): still a grid."""
        per_row = self.content.shape[1] // self.grid[0]
        content = self.content[:, start * per_row:stop * per_row]
        return GridTokens(content, (self.tables[0][start:stop], *self.tables[1:]))

    def split(self, size: int, dim: int = 1) -> list[GridTokens] | list[GridPoints] | tuple[torch.Tensor, ...]:
        """Chunks along the points, as `Tensor.split`. While gradients are recorded: GridPoints of `size` points,
        each expanded only when used and keeping nothing (inside a checkpoint, nothing outlives the chunk).
        Otherwise grids of whole rows, as many as fit in `size` (at least one), for the per-axis path."""
        M = self.content.shape[1]
        per_row = M // self.grid[0]
        if dim == 1 and size >= M:
            return [self]
        # Once expanded (training without chunks expands for the fused kernels), chunks are views of that tensor.
        if dim != 1 or self.is_materialized:
            return self.materialize().split(size, dim=dim)
        if torch.is_grad_enabled():
            return [GridPoints(self, start, min(start + size, M)) for start in range(0, M, size)]
        rows = max(1, size // per_row)
        return [self.rows(start, min(start + rows, self.grid[0])) for start in range(0, self.grid[0], rows)]

    def points(self, start: int, stop: int) -> torch.Tensor:
        """The expanded tokens of points [start, stop) only: (B, stop - start, C)."""
        index = torch.arange(start, stop, device=self.content.device)
        B = self.content.shape[0]
        return torch.cat([self.content[:, start:stop], self._positions_at(index).expand(B, -1, -1)], dim=-1)

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """The expanded tokens of points `index` (B, S) of each sample: (B, S, C), as gathering from
        `materialize()` (which it reuses if it was built) without expanding the other points."""
        if self.is_materialized:
            tokens = self.materialize()
            return torch.gather(tokens, 1, index[..., None].expand(*index.shape, tokens.shape[-1]))
        content = torch.gather(self.content, 1, index[..., None].expand(*index.shape, self.content_channels))
        return torch.cat([content, self._positions_at(index)], dim=-1)

    def _positions_at(self, index: torch.Tensor) -> torch.Tensor:
        """Position features of points `index` (any shape): (*index.shape, Cp), summed as materialize() sums them."""
        positions = 0
        for table, size, stride in zip(self.tables, self.grid, _strides(self.grid)):
            positions = positions + table[(index // stride) % size]  # this axis's index of every point
        return positions

    def centring(self, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """([content, -mean] (B, M, Cc + 1), rstd (B, M)) of LayerNorm with `eps`: computed once per tokens, as an
        encoder and a decoder both normalise the same tokens."""
        if eps not in self._normalizations:
            mean, rstd = self.layer_norm_statistics(eps)
            self._normalizations[eps] = (torch.cat([self.content, -mean.unsqueeze(-1)], dim=-1), rstd)
        return self._normalizations[eps]

    def layer_norm_statistics(self, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's mean and 1 / sqrt(variance + eps) over all its channels, as LayerNorm takes them: (B, M) each.

        Sums of the position channels and of their squares come per axis, plus one dot product per pair of
        axes for tables that share channels; float64 keeps E[x^2] - E[x]^2 from cancelling.
        """
        c = self.content.double()
        tables = [t.double() for t in self.tables]
        total = c.sum(-1) + sum_on_grid([t.sum(-1, keepdim=True) for t in tables]).reshape(-1)  # (B, M)
        squares = (c * c).sum(-1) + sum_on_grid([(t * t).sum(-1, keepdim=True) for t in tables]).reshape(-1)
        for a in range(len(tables)):
            for b in range(a + 1, len(tables)):
                cross = tables[a] @ tables[b].T  # (n_a, n_b): shared channels of two axes
                squares = squares + 2 * on_grid(cross, (a, b), len(tables)).expand(*self.grid).reshape(-1)
        C = self.shape[-1]
        mean = total / C
        variance = (squares / C - mean * mean).clamp_min(0.0)
        return mean.to(self.content.dtype), (variance + eps).rsqrt().to(self.content.dtype)


def on_grid(values: torch.Tensor, axes: tuple[int, ...], ndim: int, lead: int = 0) -> torch.Tensor:
    """Reshape `values` (..., n_a, [n_b, ...], [trailing]) so its axis dims broadcast against a grid of `ndim` axes.

    The dims after `lead` leading ones are the grid axes `axes` (in order), then whatever trails them.
    """
    shape = list(values.shape)
    head, sizes, tail = shape[:lead], shape[lead:lead + len(axes)], shape[lead + len(axes):]
    grid = [1] * ndim
    for axis, size in zip(axes, sizes):
        grid[axis] = size
    return values.reshape(*head, *grid, *tail)


def sum_on_grid(tables: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """sum_a tables[a][i_a] on the grid: (n_0, ..., n_k, C) for tables (n_a, C)."""
    ndim = len(tables)
    return sum(on_grid(t, (a,), ndim) for a, t in enumerate(tables))


def grid_positions(tables: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The position features of every point of the grid, row-major: (prod(n_a), C)."""
    return sum_on_grid(tables).reshape(-1, tables[0].shape[-1])


def _strides(grid: tuple[int, ...]) -> list[int]:
    """Row-major strides of the grid's axes: points between consecutive indices of each axis."""
    return [math.prod(grid[a + 1:]) for a in range(len(grid))]


@dataclass(frozen=True, eq=False)  # identity semantics: fields are tensors
class GridPoints:
    """Points [start, stop) of GridTokens, expanded only when used: chunks that are not whole grid rows."""

    tokens: GridTokens
    start: int
    stop: int

    @property
    def shape(self) -> torch.Size:
        B, _, C = self.tokens.shape
        return torch.Size((B, self.stop - self.start, C))

    def materialize(self) -> torch.Tensor:
        return self.tokens.points(self.start, self.stop)


class GridFourierPositions(ConcatFourierPositions):
    """`ConcatFourierPositions` whose tokens are GridTokens: the Fourier features stay one table per axis."""

    def forward(self, content: torch.Tensor) -> GridTokens:  # type: ignore[override]
        return GridTokens(content, fourier_axis_tables(self.position))


def fourier_axis_tables(encoding: FourierPositionEncoding) -> tuple[torch.Tensor, ...]:
    """One (index_dims[a], C) table per axis whose sum on the grid is `encoding`'s features, bit for bit.

    Each channel depends on one axis (its position, or a sine/cosine of it), so table a holds axis a's
    channels, computed exactly as for the whole grid, and zeros elsewhere.
    """
    dims, options = encoding.index_dims, encoding.feature_options
    owners = fourier_channel_axes(len(dims), options["num_bands"], options["concat_pos"], options["sine_only"])
    buffer = encoding.features  # empty when uncached: it only gives the module's dtype and device
    tables = []
    for axis, size in enumerate(dims):
        positions = torch.zeros(size, len(dims), dtype=buffer.dtype, device=buffer.device)
        positions[:, axis] = linear_positions((size,))[:, 0]  # the whole grid's coordinates along this axis
        features = fourier_features(positions, **options)
        tables.append(features * (owners == axis).to(features.device))
    return tuple(tables)


def fourier_channel_axes(
    num_dims: int, num_bands: int, concat_pos: bool = True, sine_only: bool = False,
) -> torch.Tensor:
    """The one axis each channel of `fourier_features` depends on: (channels,)."""
    bands = torch.arange(num_dims).repeat_interleave(num_bands)  # dim-major, as the features
    parts = [bands] if sine_only else [bands, bands]
    return torch.cat([torch.arange(num_dims), *parts] if concat_pos else parts)
