"""DeepMind's convolutional image stem ("conv" preprocessing): a 7x7 stride-2 convolution, batch norm, ReLU
and 3x3 stride-2 max pooling, then one token per output position with 2D position features.

    stem = ConvImagePatches((224, 224), channels=3, conv_channels=64)   # 224 x 224 -> 55 x 55 tokens
    features = stem(images)                                            # (B, 224, 224, 3) -> (B, 3025, 64 + 258)

The padding is Hugging Face's `Conv2dSamePadding` for a 7x7 kernel: 3 pixels on each side.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from perceiver_mt.modalities.grid import FeaturesOfPatches, GridPatches

KERNEL, STRIDE, POOL = 7, 2, 3


def stem_output_size(size: int) -> int:
    convolved = (size + 2 * (KERNEL // 2) - KERNEL) // STRIDE + 1
    return (convolved - POOL) // STRIDE + 1


class ConvStem(nn.Module):
    """(B, C, H, W) -> (B, conv_channels, H', W'): conv 7x7/2, batch norm, ReLU, max pool 3x3/2."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, KERNEL, stride=STRIDE, padding=KERNEL // 2, bias=False)
        self.batchnorm = nn.BatchNorm2d(out_channels)
        self.pool = nn.MaxPool2d(POOL, stride=STRIDE)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.batchnorm(self.conv(images))))


class ConvImagePatches(FeaturesOfPatches):
    """Images (B, H, W, C) (or grey (B, H, W)) -> features (B, H' * W', conv_channels + P): the stem's output per position, then
    its position code on the stem's output grid (Fourier or learned, as `GridPatches`)."""

    def __init__(self, image_size: Sequence[int], channels: int = 3, conv_channels: int = 64,
                 position: str = "fourier", num_bands: int = 64, max_resolution: Sequence[int] | None = None,
                 learned_channels: int = 64):
        super().__init__()
        self.stem = ConvStem(channels, conv_channels)
        grid = tuple(stem_output_size(int(s)) for s in image_size)
        self.patches = GridPatches(grid, (1, 1), conv_channels, position, num_bands, max_resolution, learned_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 3:  # grey (B, H, W)
            images = images.unsqueeze(-1)
        convolved = self.stem(images.permute(0, 3, 1, 2))  # (B, conv_channels, H', W')
        return self.patches(convolved.permute(0, 2, 3, 1))
