"""Patches of any regular grid (an image, a video, a spectrogram, a waveform) with position features.

Space-to-depth as in DeepMind's Perceiver IO: an array (B, d1, ..., dn, C) cut into blocks b1 x ... x bn
becomes (B, d1/b1, ..., dn/bn, b1 * ... * bn * C), each block's values in (b1, ..., bn, C) row-major
order (their `einops` pattern 'b (t dt) (h dh) (w dw) c -> b t h w (dt dh dw c)'). One token per block,
blocks in row-major order; the token's position code is that of its block on the grid of blocks.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from perceiver_mt.model import ConcatFourierPositions, FourierPositionEncoding, LearnedPositionEncoding

POSITIONS = ("fourier", "learned")


def space_to_depth(x: torch.Tensor, block: Sequence[int]) -> torch.Tensor:
    """(B, d1, ..., dn, C) -> (B, d1/b1, ..., dn/bn, b1 * ... * bn * C), DeepMind's channel order."""
    n = len(block)
    B, *dims, C = x.shape
    if len(dims) != n or any(d % b for d, b in zip(dims, block)):
        raise ValueError(f"space_to_depth: grid {tuple(dims)} cannot be cut into blocks {tuple(block)}")
    split = [s for d, b in zip(dims, block) for s in (d // b, b)]
    x = x.reshape(B, *split, C)  # (B, d1/b1, b1, ..., dn/bn, bn, C)
    outer = [1 + 2 * i for i in range(n)]
    inner = [2 + 2 * i for i in range(n)]
    x = x.permute(0, *outer, *inner, 2 * n + 1)  # (B, d1/b1, ..., dn/bn, b1, ..., bn, C)
    return x.reshape(B, *(d // b for d, b in zip(dims, block)), math.prod(block) * C)


def depth_to_space(x: torch.Tensor, block: Sequence[int]) -> torch.Tensor:
    """The inverse of `space_to_depth`: (B, g1, ..., gn, b1 * ... * bn * C) -> (B, g1*b1, ..., gn*bn, C)."""
    n = len(block)
    B, *grid, D = x.shape
    C = D // math.prod(block)
    x = x.reshape(B, *grid, *block, C)
    order = [i for a in range(n) for i in (1 + a, 1 + n + a)]
    x = x.permute(0, *order, 2 * n + 1)  # (B, g1, b1, ..., gn, bn, C)
    return x.reshape(B, *(g * b for g, b in zip(grid, block)), C)


class GridPatches(nn.Module):
    """(B, *grid_shape, C) -> features (B, M, P_c + P_p): block values, then the block's position code.

    M = prod(grid_shape / block) tokens, row-major. Position: "fourier" = DeepMind's Fourier features of
    the block grid (`num_bands` per axis, frequencies up to max_resolution / 2, default the block grid),
    or "learned" = a trainable `learned_channels` vector per block (DeepMind's trainable encoding, init
    scale 0.02).

    Where the features are the encoder's tokens as they are (`TokenAdapter(project=False)` calls
    `feed_encoder_as_is`), [content | Fourier features] are made by the reference `ConcatFourierPositions`,
    so the grid-token speedup (`speed.grid_tokens`) can keep the position features per axis. Features that
    are projected, padded or subsampled first are concatenated here, a plain tensor.

    `position_axes` (default: all) are the grid axes the position code describes; along the others every
    block gets the same code, so the encoder, which sees tokens as a set, cannot tell where along them a
    pattern lies (e.g. a log-frequency spectrogram coded in time only: a higher voice is the same tokens).
    """

    def __init__(self, grid_shape: Sequence[int], block: Sequence[int], in_channels: int = 1,
                 position: str = "fourier", num_bands: int = 8, max_resolution: Sequence[int] | None = None,
                 learned_channels: int = 64, position_axes: Sequence[int] | None = None):
        super().__init__()
        if len(block) != len(grid_shape) or any(d % b for d, b in zip(grid_shape, block)):
            raise ValueError(f"a grid of shape {tuple(grid_shape)} cannot be cut into patches {tuple(block)}")
        self.grid_shape = tuple(int(d) for d in grid_shape)
        self.block = tuple(int(b) for b in block)
        self.in_channels = in_channels
        self.index_dims = tuple(d // b for d, b in zip(self.grid_shape, self.block))  # the grid of tokens
        axes = tuple(range(len(self.index_dims))) if position_axes is None else tuple(sorted(set(position_axes)))
        if not axes or not all(0 <= a < len(self.index_dims) for a in axes):
            raise ValueError(f"position_axes={position_axes} must name at least one axis of a {len(self.index_dims)}-axis grid")
        self.position_axes = axes
        coded = tuple(self.index_dims[a] for a in axes)  # the grid the position code describes
        if position == "fourier":
            resolution = tuple(max_resolution[a] for a in axes) if max_resolution else coded
            self.position = FourierPositionEncoding(coded, num_bands, resolution)
        elif position == "learned":
            self.position = LearnedPositionEncoding(math.prod(coded), learned_channels)
        else:
            raise ValueError(f"position={position!r} is unknown; choose one of {', '.join(POSITIONS)}")
        self.content_channels = math.prod(self.block) * in_channels

    @property
    def num_tokens(self) -> int:
        return math.prod(self.index_dims)

    @property
    def channel_groups(self) -> tuple[int, int]:
        return self.content_channels, self.position.num_channels

    @property
    def num_channels(self) -> int:
        return sum(self.channel_groups)

    def content(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *grid_shape, C) -> (B, M, P_c): the patches without positions (DeepMind's inputs_without_pos)."""
        return space_to_depth(x, self.block).reshape(x.shape[0], self.num_tokens, self.content_channels)

    def positions(self, batch_size: int) -> torch.Tensor:
        """(B, M, P_p): each token's position code (the same along axes outside `position_axes`)."""
        codes = self.position(batch_size)
        if len(self.position_axes) == len(self.index_dims):
            return codes
        shape = [d if a in self.position_axes else 1 for a, d in enumerate(self.index_dims)]
        codes = codes.reshape(batch_size, *shape, codes.shape[-1]).expand(batch_size, *self.index_dims, -1)
        return codes.reshape(batch_size, self.num_tokens, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        content = self.content(x)  # (B, M, P_c)
        if isinstance(self.position, ConcatFourierPositions):
            return self.position(content)  # (B, M, P_c + P_p); GridTokens under speed.grid_tokens
        position = self.positions(x.shape[0]).to(content.dtype)  # (B, M, P_p)
        return torch.cat([content, position], dim=-1)

    def make_encoder_tokens(self) -> None:
        """From now on the features are the encoder's tokens as they are: Fourier features are concatenated by
        `ConcatFourierPositions` (the same encoding; its buffer is not in the state_dict, so names stay). Content
        narrower than float32 (a conv stem's output under bf16 autocast) then meets float32 features unrounded:
        the concatenation promotes it, as for every other grid's tokens. A code along some axes only stays
        as it is (its features are not a Fourier grid of the tokens)."""
        if isinstance(self.position, FourierPositionEncoding) and len(self.position_axes) == len(self.index_dims):
            encoding = self.position
            self.position = ConcatFourierPositions(encoding.index_dims, cached=encoding.cached,
                                                   **encoding.feature_options)


class FeaturesOfPatches(nn.Module):
    """A preprocessor whose features are made last by a `GridPatches` it holds as `patches` (a conv stem's
    output, a log-mel spectrogram): its channel groups, width and token count are those patches'."""

    patches: GridPatches

    @property
    def channel_groups(self) -> tuple[int, int]:
        return self.patches.channel_groups

    @property
    def num_channels(self) -> int:
        return self.patches.num_channels

    @property
    def num_tokens(self) -> int:
        return self.patches.num_tokens


def feed_encoder_as_is(preprocessor: nn.Module) -> None:
    """Say that `preprocessor`'s features go to the encoder as they are (`TokenAdapter(project=False)`): a
    GridPatches (or one held as `patches` and run last, as `ConvImagePatches` and `LogMelPatches` do) then
    makes them with `ConcatFourierPositions`, which the grid-token speedup turns into GridTokens. Only the
    encoder and decoder take GridTokens: a preprocessor whose features are also used otherwise (by a query
    module that subsamples them, in a multimodal concatenation) must not be passed here."""
    patches = preprocessor if isinstance(preprocessor, GridPatches) else getattr(preprocessor, "patches", None)
    if isinstance(patches, GridPatches):
        patches.make_encoder_tokens()
