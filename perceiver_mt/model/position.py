"""Position encodings: DeepMind's Fourier features and learned encodings.

The Fourier formula matches the original Perceiver code so that pretrained weights see the same
features: positions = linspace(-1, 1) per index dimension, meshgrid 'ij', row-major flattening;
frequencies = linspace(1, max_resolution / 2, num_bands); features = [positions, sin(pi f x), cos(pi f x)].
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


def linear_positions(index_dims: Sequence[int], output_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Grid positions of an array of shape `index_dims`  ->  (prod(index_dims), len(index_dims))."""
    axes = [torch.linspace(output_range[0], output_range[1], n, dtype=torch.float64) for n in index_dims]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (*index_dims, D)
    return grid.reshape(-1, len(index_dims)).float()


def fourier_features(
    positions: torch.Tensor,
    num_bands: int,
    max_resolution: Sequence[int],
    concat_pos: bool = True,
    sine_only: bool = False,
) -> torch.Tensor:
    """positions: (..., D) in [-1, 1]  ->  (..., D * (2 * num_bands + 1)) Fourier features.

    Taking arbitrary positions (not just a full grid) lets decoders encode a subsample of queries.
    """
    D = positions.shape[-1]
    if len(max_resolution) != D:
        raise ValueError(f"max_resolution has {len(max_resolution)} entries for {D}-dimensional positions")
    freqs = torch.stack(
        [torch.linspace(1.0, res / 2, num_bands, dtype=torch.float64) for res in max_resolution]
    ).to(positions.device)  # (D, bands)
    scaled = (positions.double()[..., :, None] * freqs).flatten(-2)  # (..., D * bands), dim-major
    parts = [torch.sin(math.pi * scaled)] if sine_only else [torch.sin(math.pi * scaled), torch.cos(math.pi * scaled)]
    if concat_pos:
        parts.insert(0, positions.double())
    return torch.cat(parts, dim=-1).to(positions.dtype if positions.is_floating_point() else torch.float32)


def fourier_channels(num_dims: int, num_bands: int, concat_pos: bool = True, sine_only: bool = False) -> int:
    """Width of `fourier_features` output, for sizing adapters before any tensor exists."""
    return num_dims * (num_bands * (1 if sine_only else 2) + (1 if concat_pos else 0))


class FourierPositionEncoding(nn.Module):
    """Fixed Fourier features of a full grid of shape `index_dims`, kept as a non-trainable buffer.

    `cached=False` recomputes them at every forward instead: for grids of 100k+ points, whose feature table
    (188 MB for a 368 x 496 image at 64 bands) would otherwise stay resident beside training's peak.
    """

    def __init__(
        self,
        index_dims: Sequence[int],
        num_bands: int,
        max_resolution: Sequence[int] | None = None,
        concat_pos: bool = True,
        sine_only: bool = False,
        cached: bool = True,
    ):
        super().__init__()
        self.feature_options = dict(num_bands=num_bands, max_resolution=tuple(max_resolution or index_dims),
                                    concat_pos=concat_pos, sine_only=sine_only)
        self._num_channels = fourier_channels(len(index_dims), num_bands, concat_pos, sine_only)
        self.index_dims = tuple(index_dims)
        self.cached = cached
        # Uncached, the buffer stays empty: it only follows the module's device.
        stored = fourier_features(linear_positions(index_dims), **self.feature_options) if cached else torch.empty(0)
        self.register_buffer("features", stored, persistent=False)

    @property
    def num_channels(self) -> int:
        return self._num_channels

    def forward(self, batch_size: int) -> torch.Tensor:
        if self.cached:
            features = self.features
        else:  # positions in the (empty) buffer's dtype and device, which follow the module
            features = fourier_features(linear_positions(self.index_dims).to(self.features), **self.feature_options)
        return features.expand(batch_size, -1, -1)  # (B, M, C)


class ConcatFourierPositions(nn.Module):
    """Tokens of a grid: each point's content followed by the Fourier features of its position.

    content (B, M, Cc) with M = prod(index_dims) points in row-major order  ->  (B, M, Cc + num_channels).
    Adapters whose tokens are [content | positions] build them here (the speed layer can then keep the
    position features per axis instead of repeating them for every point, see perceiver_mt/speed/grid_tokens.py).
    """

    def __init__(
        self,
        index_dims: Sequence[int],
        num_bands: int,
        max_resolution: Sequence[int] | None = None,
        concat_pos: bool = True,
        sine_only: bool = False,
        cached: bool = True,
    ):
        super().__init__()
        self.position = FourierPositionEncoding(index_dims, num_bands, max_resolution, concat_pos, sine_only, cached)

    @property
    def num_channels(self) -> int:
        """Position channels appended to the content."""
        return self.position.num_channels

    def forward(self, content: torch.Tensor) -> torch.Tensor:
        return torch.cat([content, self.position(content.shape[0])], dim=-1)  # (B, M, Cc + Cp)


class LearnedPositionEncoding(nn.Module):
    """One trainable vector per position."""

    def __init__(self, num_positions: int, num_channels: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(num_positions, num_channels))
        nn.init.trunc_normal_(self.embedding, std=0.02, a=-2.0, b=2.0)

    @property
    def num_channels(self) -> int:
        return self.embedding.shape[-1]

    def forward(self, batch_size: int) -> torch.Tensor:
        return self.embedding.expand(batch_size, -1, -1)  # (B, M, C)
