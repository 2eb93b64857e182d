"""Video as tokens: T x H x W patches (space-to-depth in time and space) with 3D Fourier position features.

    patches = VideoPatches((16, 224, 224), channels=3, patch_size=4, temporal_patch=1)
    features = patches(video)                            # (B, 16, 224, 224, 3) -> (B, 16*56*56, 48 + P)

DeepMind's video preprocessing ('patches' with temporal and spatial block sizes). For optical flow, two
frames are a video of T = 2 whose temporal patch is 2: each token holds both frames' patch.
"""

from __future__ import annotations

from typing import Sequence

import torch

from perceiver_mt.modalities.checks import TaskInputError
from perceiver_mt.modalities.grid import GridPatches


class VideoPatches(GridPatches):
    """Video (B, T, H, W, C)  ->  features (B, T/t * H/k * W/k, t*k*k*C + P), tokens in (t, h, w) row-major order."""

    def __init__(self, frames: Sequence[int], channels: int = 3, patch_size: int = 1, temporal_patch: int = 1,
                 position: str = "fourier", num_bands: int = 8, max_resolution: Sequence[int] | None = None,
                 learned_channels: int = 64):
        T, H, W = frames
        super().__init__((T, H, W), (temporal_patch, patch_size, patch_size), channels, position, num_bands,
                         max_resolution, learned_channels)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return super().forward(video)


def check_video(task: str, video: object, frames: Sequence[int], channels: int = 3) -> None:
    """One-line TaskInputError unless `video` is (B, T, H, W, C) with the task's frame count, size and channels."""
    T, H, W = frames
    expected = (T, H, W, channels)
    if not isinstance(video, torch.Tensor) or video.dim() != 5 or tuple(video.shape[1:]) != expected:
        got = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise TaskInputError(f"task {task!r} takes video of shape (B, {T}, {H}, {W}, {channels}) "
                             f"({T} frames of {H} x {W}, {channels} channels), got {got}")
