"""Point sets as tokens: one per point, its features next to Fourier features of its coordinates.

Sets of different sizes share a batch by padding, and the mask says which points are padding:

    batch = pad_point_sets([coords_a, coords_b], [values_a, values_b])  # coords (Ni, D) in [-1, 1], values (Ni, F)
    # {"coords": (2, N, D), "features": (2, N, F), "pad_mask": (2, N) True = padding}, N = the larger set
    adapter = TokenAdapter(PointFeatures(coord_dims=2, feature_channels=1, num_bands=8), encoder.input_channels)
    tokens, pad_mask = adapter({"inputs": batch})

The encoder's cross-attention gives padded points zero weight, and every per-point map here sees one
point at a time, so what a padded slot holds has no effect on any output (tested bit for bit).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from perceiver_mt.model import fourier_channels, fourier_features
from perceiver_mt.modalities.checks import TaskInputError, describe


class PointFeatures(nn.Module):
    """{"coords": (B, N, D), "features": (B, N, F), "pad_mask": (B, N)}  ->  (B, N, F + D * (2 * num_bands + 1)).

    Coordinates are expected in [-1, 1] (DeepMind's convention for Fourier positions); `max_resolution`
    (default 32 per axis) sets the highest frequency, max_resolution / 2 cycles across [-1, 1]. Without
    features (`feature_channels=0`) a point is its position alone.
    """

    def __init__(self, coord_dims: int, feature_channels: int = 0, num_bands: int = 8,
                 max_resolution: Sequence[int] | None = None):
        super().__init__()
        self.coord_dims = coord_dims
        self.feature_channels = feature_channels
        self.num_bands = num_bands
        self.max_resolution = tuple(max_resolution or (32,) * coord_dims)
        self.position_channels = fourier_channels(coord_dims, num_bands)

    @property
    def channel_groups(self) -> tuple[int, int]:
        return self.feature_channels, self.position_channels

    @property
    def num_channels(self) -> int:
        return self.feature_channels + self.position_channels

    def forward(self, points: dict[str, torch.Tensor]) -> torch.Tensor:
        coords = points["coords"]
        position = fourier_features(coords, self.num_bands, self.max_resolution)  # (B, N, position_channels)
        if not self.feature_channels:
            return position
        return torch.cat([points["features"].to(position.dtype), position], dim=-1)

    def pad_mask(self, points: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return points.get("pad_mask")


def pad_point_sets(coords: Sequence[Any], features: Sequence[Any] | None = None,
                   num_points: int | None = None) -> dict[str, torch.Tensor]:
    """Point sets of different sizes -> one padded batch {"coords", "features", "pad_mask"}.

    coords[i]: (N_i, D); features[i]: (N_i, F) or None. Padded slots hold zeros and pad_mask True.
    `num_points` fixes the padded size (default: the largest set); a larger set is an error.
    """
    coords = [torch.as_tensor(np.asarray(c), dtype=torch.float32) for c in coords]
    sizes = [len(c) for c in coords]
    N = num_points if num_points is not None else max(sizes, default=0)
    if max(sizes, default=0) > N:
        raise ValueError(f"a set of {max(sizes)} points does not fit num_points={N}")
    D = coords[0].shape[-1] if coords else 0
    batch = {"coords": torch.zeros(len(coords), N, D), "pad_mask": torch.ones(len(coords), N, dtype=torch.bool)}
    if features is not None:
        features = [torch.as_tensor(np.asarray(f), dtype=torch.float32).reshape(len(c), -1)
                    for f, c in zip(features, coords)]
        batch["features"] = torch.zeros(len(coords), N, features[0].shape[-1] if features else 0)
    for i, c in enumerate(coords):
        batch["coords"][i, :len(c)] = c
        batch["pad_mask"][i, :len(c)] = False
        if features is not None:
            batch["features"][i, :len(c)] = features[i]
    return batch


def check_points(task: str, points: object, coord_dims: int, feature_channels: int = 0) -> None:
    """One-line TaskInputError unless `points` is a padded point-set batch of the task's dimensions."""
    expected = (f"point sets {{coords: (B, N, {coord_dims}), "
                + (f"features: (B, N, {feature_channels}), " if feature_channels else "")
                + "pad_mask: (B, N) bool}")
    if not isinstance(points, dict) or "coords" not in points:
        raise TaskInputError(f"task {task!r} takes {expected}, got {describe(points)} (no coordinates)")
    coords, mask = points["coords"], points.get("pad_mask")
    ok = isinstance(coords, torch.Tensor) and coords.dim() == 3 and coords.shape[-1] == coord_dims
    ok = ok and (mask is None or (isinstance(mask, torch.Tensor) and mask.dtype == torch.bool
                                  and tuple(mask.shape) == tuple(coords.shape[:2])))
    if feature_channels:
        values = points.get("features")
        ok = ok and isinstance(values, torch.Tensor) and tuple(values.shape) == (*coords.shape[:2], feature_channels)
    if not ok:
        raise TaskInputError(f"task {task!r} takes {expected}, got {describe(points)}")
