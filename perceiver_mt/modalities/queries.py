"""Output queries: what the task decoder asks the latents, one query per output.

    LearnedQueries(64)                         one trainable query (classification): (B, 1, 64)
    GridQueries((28, 28), 64)                  one per grid position, Fourier (or learned) codes: (B, 784, 64)
    InputQueries(PointFeatures(2, 1), 64)      one per input element, built from its features: (B, N, 64)

Subsampled decoding: a training batch may carry `query_index` (B, S), a random subset of the O outputs
per sample (`draw_query_subset`); the query modules then build only those S queries, and the loss
compares against `take_queries(target, query_index)`. Evaluation batches carry none and decode all O.
Queries never attend to each other, so a subset's outputs equal the full decoding's at those positions.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from perceiver_mt.model import FourierPositionEncoding
from perceiver_mt.modalities.projection import FeatureProjection, TokenAdapter, batch_size_of

QUERY_INDEX = "query_index"


def draw_query_subset(num_queries: int, num_samples: int, rng: np.random.Generator) -> torch.Tensor:
    """`num_samples` distinct output positions of `num_queries`, sorted: (num_samples,) int64."""
    if not 0 < num_samples <= num_queries:
        raise ValueError(f"cannot draw {num_samples} of {num_queries} output queries")
    return torch.from_numpy(np.sort(rng.choice(num_queries, num_samples, replace=False))).long()


def take_queries(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """(B, O, ...) -> (B, S, ...) at positions `index` (B, S); `index` None -> `x` unchanged.

    Grid features the speed layer keeps per axis (`GridTokens`, under `speed.grid_tokens`) pick their own
    points (`take`), a plain (B, S, C) tensor, without expanding the others.
    """
    if index is None:
        return x
    if not isinstance(x, torch.Tensor):
        return x.take(index)
    gather = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return torch.gather(x, 1, gather)


class LearnedQueries(nn.Module):
    """`num_queries` trainable queries (DeepMind's trainable position encoding, init scale 0.02): (B, O, channels)."""

    def __init__(self, channels: int, num_queries: int = 1):
        super().__init__()
        self.queries = nn.Parameter(torch.empty(num_queries, channels))
        nn.init.trunc_normal_(self.queries, std=0.02, a=-0.04, b=0.04)

    @property
    def num_channels(self) -> int:
        return self.queries.shape[1]

    @property
    def num_queries(self) -> int:
        return self.queries.shape[0]

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        index = batch.get(QUERY_INDEX)
        if index is not None:
            return self.queries[index]  # (B, S, channels)
        return self.queries.expand(batch_size_of(batch["inputs"]), -1, -1)


class GridQueries(nn.Module):
    """One query per position of a grid `index_dims` (row-major): its Fourier features, projected to
    `channels` (None: the raw features, DeepMind's BasicDecoder), or a learned vector (`position="learned"`).

    A subset takes its rows from the full grid's table, so it equals the full grid's queries there.
    (DeepMind's code maps subsampled points to [-1, 1] as -1 + 2 i / n, slightly off its full-grid
    linspace; here both use the grid's own positions.)
    """

    def __init__(self, index_dims: Sequence[int], channels: int | None, position: str = "fourier",
                 num_bands: int = 8, max_resolution: Sequence[int] | None = None):
        super().__init__()
        self.index_dims = tuple(index_dims)
        if position == "fourier":
            self.table = FourierPositionEncoding(self.index_dims, num_bands, max_resolution)
            width = self.table.num_channels
            self.projection = FeatureProjection((width,), channels) if channels is not None else None
            self._channels = channels or width
        elif position == "learned":
            if channels is None:
                raise ValueError("learned grid queries need a channel count")
            self.table = LearnedQueries(channels, math.prod(self.index_dims))
            self.projection = None
            self._channels = channels
        else:
            raise ValueError(f"position={position!r} is unknown; choose one of fourier, learned")

    @property
    def num_channels(self) -> int:
        return self._channels

    @property
    def num_queries(self) -> int:
        return math.prod(self.index_dims)

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        if isinstance(self.table, LearnedQueries):
            return self.table(batch)
        index = batch.get(QUERY_INDEX)
        features = self.table.features[index] if index is not None else self.table(batch_size_of(batch["inputs"]))
        return features if self.projection is None else self.projection(features)


class InputQueries(nn.Module):
    """One query per input element, built from its preprocessed features (DeepMind's flow decoder, and
    per-point outputs): preprocessor(batch[key]) (B, M, C), projected to `channels` (None: as they are).

    With `adapter` (a `TokenAdapter` of the same preprocessor) the features the adapter made of this batch are
    taken from it, not computed again: one computation per forward, whose gradient gathers both uses. Unprojected
    under `speed.grid_tokens`, they are one GridTokens object that the encoder and the decoder then share (its
    expansion in training, its LayerNorm statistics at inference).
    """

    def __init__(self, preprocessor: nn.Module, channels: int | None, key: str = "inputs",
                 adapter: TokenAdapter | None = None):
        super().__init__()
        self.preprocessor = preprocessor
        self.projection = FeatureProjection(preprocessor.channel_groups, channels) if channels is not None else None
        self.key = key
        self._channels = channels or preprocessor.num_channels
        if adapter is not None:
            if adapter.preprocessor is not preprocessor or adapter.key != key:
                raise ValueError("InputQueries can reuse only the features of an adapter of the same preprocessor "
                                 "and input key")
            adapter.keep_features = True
        self._adapter = [adapter] if adapter is not None else []  # a list: not registered twice as a submodule

    @property
    def num_channels(self) -> int:
        return self._channels

    @property
    def num_queries(self) -> int:
        return self.preprocessor.num_tokens

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        raw = batch[self.key]
        features = self._adapter[0].take_features(raw) if self._adapter else None
        if features is None:  # no adapter, or recomputed alone (activation checkpointing)
            features = self.preprocessor(raw)
        features = take_queries(features, batch.get(QUERY_INDEX))  # (B, S, C)
        if self.projection is None:
            return features
        return self.projection(features if isinstance(features, torch.Tensor) else features.materialize())
