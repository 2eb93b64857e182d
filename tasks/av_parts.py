"""Parts of the audio-video autoencoder: modality features, multimodal padding, output queries, PSNR.

DeepMind's multimodal scheme (Perceiver IO, Kinetics autoencoding): each modality is preprocessed on
its own (video: space-time patches + 3D Fourier features; audio: patches of raw samples + 1D Fourier
features), padded to one common width with a trainable vector per modality, and concatenated. The
decoder's queries are built the same way from position features only (one group per modality), and the
decoder's outputs are split back by modality.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torchmetrics import Metric

from perceiver_mt.model import fourier_features, linear_positions


class GridFourier(nn.Module):
    """Fourier features of a full grid `index_dims`, or of chosen points of it: (B, M or S, C)."""

    def __init__(self, index_dims: Sequence[int], num_bands: int):
        super().__init__()
        positions = linear_positions(index_dims)  # (M, D), row-major
        self.register_buffer("table", fourier_features(positions, num_bands, tuple(index_dims)), persistent=False)

    @property
    def num_channels(self) -> int:
        return self.table.shape[-1]

    def forward(self, batch_size: int, index: torch.Tensor | None = None) -> torch.Tensor:
        return self.table.expand(batch_size, -1, -1) if index is None else self.table[index]


class VideoFeatures(nn.Module):
    """(B, T, H, W, 3) uint8 -> (B, T/t * H/k * W/k, t*k*k*3 + Fourier): space-time patches, values in [-1, 1].

    Patch values are in (t, k, k, colour) order, tokens row-major over the patch grid (DeepMind's
    space-to-depth).
    """

    def __init__(self, frames: int, image_size: Sequence[int], patch: int, temporal_patch: int, num_bands: int):
        super().__init__()
        H, W = image_size
        self.block = (temporal_patch, patch, patch)
        self.grid = (frames // temporal_patch, H // patch, W // patch)
        self.position = GridFourier(self.grid, num_bands)
        self.num_channels = math.prod(self.block) * 3 + self.position.num_channels

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        B = len(video)
        (t, k, _), (gt, gh, gw) = self.block, self.grid
        x = video.float().div(127.5).sub(1.0).reshape(B, gt, t, gh, k, gw, k, 3)
        patches = x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(B, gt * gh * gw, t * k * k * 3)
        return torch.cat([patches, self.position(B)], dim=-1)


class AudioFeatures(nn.Module):
    """(B, S) samples -> (B, S / p, p + Fourier): consecutive patches of `p` samples (DeepMind: 16), scaled by
    `gain` so speech-level audio has about unit variance."""

    def __init__(self, num_samples: int, samples_per_patch: int, num_bands: int, gain: float):
        super().__init__()
        self.patch = samples_per_patch
        self.gain = gain
        self.position = GridFourier((num_samples // samples_per_patch,), num_bands)
        self.num_channels = samples_per_patch + self.position.num_channels

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        B = len(audio)
        patches = audio.float().mul(self.gain).reshape(B, -1, self.patch)  # (B, S/p, p)
        return torch.cat([patches, self.position(B)], dim=-1)


class ModalityPadding(nn.Module):
    """(B, M, C_m) -> (B, M, width): the features, then this modality's trainable padding (init scale 0.02)."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.padding = nn.Parameter(torch.empty(width - channels))
        nn.init.trunc_normal_(self.padding, std=0.02, a=-0.04, b=0.04)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        B, M, _ = features.shape
        return torch.cat([features, self.padding.to(features.dtype).expand(B, M, -1)], dim=-1)


def padded_width(widths: Sequence[int], min_padding: int) -> int:
    """The common width of several modalities: the widest plus `min_padding` channels every modality pads."""
    return max(widths) + min_padding


class ReconstructionPSNR(Metric):
    """10 log10(peak^2 / MSE) over every value seen (values, not samples, weigh equally)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, peak: float = 1.0) -> None:
        super().__init__()
        self.peak = peak
        self.add_state("squared_error", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.squared_error += (preds.double() - target.double()).pow(2).sum()
        self.count += target.numel()

    def compute(self) -> torch.Tensor:
        mse = self.squared_error / self.count.clamp(min=1)
        return (10 * torch.log10(self.peak ** 2 / mse.clamp(min=1e-20))).float()


class MeanPredictionPSNR(Metric):
    """PSNR of predicting, for every value, its channel's mean over all the evaluated data: the best any
    constant prediction can do, so an upper bound on the mean-prediction baseline. Last dim = channels."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, channels: int, peak: float = 1.0) -> None:
        super().__init__()
        self.peak = peak
        for name in ("total", "squares", "count"):
            self.add_state(name, torch.zeros(channels, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        values = target.double().reshape(-1, self.total.shape[0])
        self.total += values.sum(0)
        self.squares += values.pow(2).sum(0)
        self.count += len(values)

    def compute(self) -> torch.Tensor:
        count = self.count.clamp(min=1)
        squared_error = (self.squares - self.total ** 2 / count).sum()  # sum of (x - channel mean)^2
        mse = squared_error / count.sum()
        return (10 * torch.log10(self.peak ** 2 / mse.clamp(min=1e-20))).float()
