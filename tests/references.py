"""Independent NumPy references that several test files compare against."""

from __future__ import annotations

import numpy as np


def numpy_fourier_at(pos, num_bands, max_resolution, concat_pos=True, sine_only=False):
    """DeepMind's Fourier features of positions `pos` (N, D) in [-1, 1]."""
    pos = np.asarray(pos, dtype=np.float64)
    freqs = np.stack([np.linspace(1.0, r / 2, num_bands) for r in max_resolution])  # (D, bands)
    per_pos = (pos[:, :, None] * freqs[None]).reshape(len(pos), -1)
    features = [np.sin(np.pi * per_pos)] if sine_only else [np.sin(np.pi * per_pos), np.cos(np.pi * per_pos)]
    if concat_pos:
        features = [pos] + features
    return np.concatenate(features, axis=-1)


def numpy_fourier(index_dims, num_bands, max_resolution, concat_pos=True, sine_only=False):
    """DeepMind's Fourier features of a full grid: linspace(-1, 1) per axis, meshgrid 'ij', row-major."""
    axes = [np.linspace(-1.0, 1.0, n) for n in index_dims]
    pos = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(index_dims))
    return numpy_fourier_at(pos, num_bands, max_resolution, concat_pos, sine_only)


def brute_force_patches(x, block):
    """(B, *dims, C) -> (B, M, prod(block) * C) by loops: blocks row-major, values in (b1, ..., bn, C) order."""
    x = np.asarray(x)
    B, *dims, C = x.shape
    grid = [d // b for d, b in zip(dims, block)]
    tokens = []
    for g in np.ndindex(*grid):
        values = []
        for offset in np.ndindex(*block):
            where = tuple(gi * bi + oi for gi, bi, oi in zip(g, block, offset))
            values.append(x[(slice(None), *where)])  # (B, C)
        tokens.append(np.concatenate(values, axis=-1))
    return np.stack(tokens, axis=1)
