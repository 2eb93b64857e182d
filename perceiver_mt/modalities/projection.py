"""Preprocessed features -> tokens of one width: the linear map every modality ends with.

A preprocessor (images, audio, points, ...) turns raw input into features `[content | position]`, as
DeepMind's preprocessors concatenate `inputs_with_pos`. The shared encoder takes one width for every task
(`EncoderConfig.input_channels`), so each task projects its features to that width.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from perceiver_mt.modalities.grid import feed_encoder_as_is


class FeatureProjection(nn.Module):
    """(..., sum(groups)) -> (..., out_channels): one affine map whose channel groups start with equal shares.

    Fan-in init gives every input channel the same weight scale, so one pixel intensity next to 34
    Fourier channels carries 1/35 of the token variance, and the encoder starts from latents that are
    nearly the same for every image. Here group g (e.g. the content, then the position features) gets
    weights of std 1/sqrt(G * width_g): each of the G groups carries about 1/G of the output variance.

    It holds its own parameters rather than an `nn.Linear` because `Task.init_weights` re-initialises
    every `nn.Linear` of a task part after it is built, which would undo this.
    """

    def __init__(self, groups: Sequence[int], out_channels: int):
        super().__init__()
        self.groups = tuple(int(g) for g in groups if g > 0)
        self.weight = nn.Parameter(torch.empty(out_channels, sum(self.groups)))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        start = 0
        for width in self.groups:
            std = 1.0 / math.sqrt(len(self.groups) * width)
            nn.init.trunc_normal_(self.weight[:, start:start + width], std=std, a=-2 * std, b=2 * std)
            start += width
        self.bias.zero_()

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.weight, self.bias)


class TokenAdapter(nn.Module):
    """A task adapter from one preprocessor: batch[key] -> tokens (B, M, channels) [, pad_mask (B, M)].

    The preprocessor is any module with `num_channels` and `channel_groups` (widths of its content and
    position parts, in order) mapping its input to features (B, M, num_channels); one with a
    `pad_mask(input)` method (point sets, several modalities) also says which tokens are padding.
    With `project=False` the features go to the encoder as they are (DeepMind's image networks feed their
    [pixels | Fourier] features unprojected), so their width must already be `channels`.
    """

    # Set by an `InputQueries` built on this adapter: the features of the last call are kept until it takes them.
    keep_features: bool = False

    def __init__(self, preprocessor: nn.Module, channels: int, key: str = "inputs", project: bool = True):
        super().__init__()
        if not project and preprocessor.num_channels != channels:
            raise ValueError(f"unprojected features have {preprocessor.num_channels} channels but the encoder takes "
                             f"{channels}: set model.input_channels={preprocessor.num_channels} or project them")
        self.preprocessor = preprocessor
        self.projection = FeatureProjection(preprocessor.channel_groups, channels) if project else None
        self.key = key
        self._kept: tuple[Any, Any] | None = None  # (raw input, its features) for the query module of this forward
        if not project:  # grid features are then the encoder's tokens: the grid-token speedup may apply to them
            feed_encoder_as_is(preprocessor)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        raw = batch[self.key]
        features = self.preprocessor(raw)
        if self.keep_features:
            self._kept = (raw, features)
        tokens = features if self.projection is None else self.projection(features)  # (B, M, channels)
        pad_mask = self.preprocessor.pad_mask(raw) if hasattr(self.preprocessor, "pad_mask") else None
        return tokens if pad_mask is None else (tokens, pad_mask)

    def take_features(self, raw: Any) -> Any:
        """The features this adapter made of `raw` in this forward (once; None if it made none of that input)."""
        kept, self._kept = self._kept, None
        return kept[1] if kept is not None and kept[0] is raw else None


def batch_size_of(inputs: Any) -> int:
    """B of a batch's inputs: a tensor, or a dict (several modalities, point sets) of them."""
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    if isinstance(inputs, dict) and inputs:
        return batch_size_of(next(iter(inputs.values())))
    raise ValueError(f"cannot tell the batch size of inputs of type {type(inputs).__name__}")
