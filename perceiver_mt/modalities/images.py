"""Images as tokens: one per pixel, or one per k x k patch (space-to-depth), with 2D position features.

    patches = ImagePatches((28, 28), patch_size=4)       # grey 28x28 -> 49 tokens of 16 values + 2D Fourier
    features = patches(images)                           # (B, 28, 28) or (B, 28, 28, 1) -> (B, 49, 16 + 34)
    adapter = TokenAdapter(patches, encoder.input_channels)   # batch["inputs"] -> (B, 49, input_channels)

Any H x W divisible by the patch size; the size is fixed when the module is built (its position table),
and `check_images` gives tasks their one-line error for anything else.
"""

from __future__ import annotations

from typing import Sequence

import torch

from perceiver_mt.modalities.checks import TaskInputError
from perceiver_mt.modalities.grid import GridPatches


class ImagePatches(GridPatches):
    """Images (B, H, W) (grey) or (B, H, W, C)  ->  features (B, H/k * W/k, k*k*C + P), patches row-major."""

    def __init__(self, image_size: Sequence[int], channels: int = 1, patch_size: int = 1, position: str = "fourier",
                 num_bands: int = 8, max_resolution: Sequence[int] | None = None, learned_channels: int = 64):
        height, width = image_size
        super().__init__((height, width), (patch_size, patch_size), channels, position, num_bands, max_resolution,
                         learned_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return super().forward(images.unsqueeze(-1) if images.dim() == 3 else images)


def check_images(task: str, images: object, image_size: Sequence[int], channels: int = 1) -> None:
    """One-line TaskInputError unless `images` is (B, H, W[, C]) of the task's size and channel count."""
    H, W = image_size
    expected = f"(B, {H}, {W})" if channels == 1 else f"(B, {H}, {W}, {channels})"
    if not isinstance(images, torch.Tensor):
        raise TaskInputError(f"task {task!r} takes images as a tensor {expected}, got {type(images).__name__}")
    shape = tuple(images.shape)
    grey_ok = channels == 1 and images.dim() == 3 and shape[1:] == (H, W)
    if not (grey_ok or (images.dim() == 4 and shape[1:] == (H, W, channels))):
        raise TaskInputError(f"task {task!r} takes images of shape {expected} (H x W = {H} x {W}, {channels} "
                             f"channel{'s' if channels > 1 else ''}), got {shape}")
