"""Image classification of scikit-learn's UCI handwritten digits (8x8 grey images, 10 classes).

Each pixel is one input token: its intensity next to 2D Fourier features of its position,
projected to the encoder's input width. One learned output query is decoded into 10 logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from perceiver_mt.metrics import MajorityClassAccuracy
from perceiver_mt.model import DecoderConfig, FourierPositionEncoding
from perceiver_mt.task import Batch, Task
from perceiver_mt.tracking.media import Heatmap, Image, Images

IMAGE_SIZE = 8
NUM_CLASSES = 10


@dataclass
class DigitsOptions:
    num_bands: int = 8  # Fourier bands per image axis
    query_channels: int = 64
    decoder_heads: int = 1
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        for name in ("num_bands", "query_channels", "decoder_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={self.label_smoothing} must be in [0, 1)")


class PixelAdapter(nn.Module):
    """(B, 8, 8) intensities in [0, 1]  ->  (B, 64, C): one token per pixel, row-major.

    Intensity and position are projected separately and added. Concatenating the one intensity
    channel with the many Fourier channels before one projection drowns it (about 1/18 of the token
    variance), and the encoder then starts from near-identical latents for every image.
    """

    def __init__(self, channels: int, num_bands: int):
        super().__init__()
        self.position = FourierPositionEncoding((IMAGE_SIZE, IMAGE_SIZE), num_bands)
        self.position_projection = nn.Linear(self.position.num_channels, channels)
        self.intensity_projection = nn.Linear(1, channels)
        nn.init.normal_(self.intensity_projection.weight, std=1.0)  # as strong as the position part

    def forward(self, batch: Batch) -> torch.Tensor:
        images = batch["inputs"]
        B = images.shape[0]
        pixels = images.reshape(B, IMAGE_SIZE * IMAGE_SIZE, 1)  # (B, 64, 1)
        return self.intensity_projection(pixels) + self.position_projection(self.position(B))  # (B, 64, C)


class LearnedQuery(nn.Module):
    """One trainable query shared by every sample: (B, 1, Cq)."""

    def __init__(self, channels: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, channels) * 0.02)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.query.expand(batch["inputs"].shape[0], -1, -1)


class DigitsTask(Task):
    options_class = DigitsOptions
    default_data = "digits"
    # Intensities are k/16, exact in float16; ten labels fit a byte.
    shard_fields = {"inputs": "float16", "target": "uint8", "index": "int64"}

    def build_adapter(self) -> nn.Module:
        return PixelAdapter(self.encoder.input_channels, self.options.num_bands)

    def build_queries(self) -> nn.Module:
        return LearnedQuery(self.options.query_channels)

    def decoder_config(self) -> DecoderConfig:
        return DecoderConfig(query_channels=self.options.query_channels, num_heads=self.options.decoder_heads)

    def build_head(self) -> nn.Module:
        return nn.Sequential(nn.Flatten(1), nn.Linear(self.options.query_channels, NUM_CLASSES))  # (B, 10)

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(outputs, batch["target"], label_smoothing=self.options.label_smoothing)

    def build_metrics(self) -> MetricCollection:
        return MetricCollection({"acc": MulticlassAccuracy(NUM_CLASSES, average="micro"),
                                 "baseline_acc": MajorityClassAccuracy(NUM_CLASSES)})

    def check_batch(self, batch: Batch) -> None:
        images = batch["inputs"]
        if images.dim() != 3 or tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"task {self.name!r} takes images of shape (B, 8, 8), got {tuple(images.shape)}")

    def make_batch(self, raw: object) -> Batch:
        """Raw 8x8 images with scikit-learn's 0..16 intensities: one image (8, 8) or (64,), or a batch
        (B, 8, 8) or (B, 64)  ->  a model batch. Anything else is one ValueError line."""
        expected = f"task {self.name!r} takes 8x8 images of intensities 0..16, shaped (B, 8, 8), (B, 64), (8, 8) or (64,)"
        try:
            images = torch.as_tensor(np.asarray(raw, dtype=np.float32))
        except (TypeError, ValueError):
            raise ValueError(f"{expected}; got a {type(raw).__name__} holding something other than numbers") from None
        if images.dim() <= 2 and images.numel() == IMAGE_SIZE * IMAGE_SIZE:
            images = images.reshape(1, IMAGE_SIZE, IMAGE_SIZE)  # one image
        elif images.dim() == 2 and images.shape[1] == IMAGE_SIZE * IMAGE_SIZE:
            images = images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
        if images.numel() and not torch.isfinite(images).all():
            raise ValueError(f"{expected}; got NaN or infinite values")
        if images.numel() and (images.min() < 0 or images.max() > 16):
            raise ValueError(f"{expected}; got values from {images.min():g} to {images.max():g}")
        return {"inputs": images / 16.0}

    def log_media(self, outputs: torch.Tensor, batch: Batch, max_images: int = 16) -> dict[str, Any]:
        """A grid of images captioned "pred p / true t", and the batch's confusion matrix."""
        predicted = outputs.argmax(dim=-1).cpu()
        target = batch["target"].cpu()
        images = batch["inputs"].float().cpu().numpy()
        grid = Images([
            Image(np.kron(images[i], np.ones((4, 4))), caption=f"pred {int(predicted[i])} / true {int(target[i])}")
            for i in range(min(max_images, len(target)))
        ])
        confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)  # rows: true, columns: predicted
        np.add.at(confusion, (target.numpy(), predicted.numpy()), 1)
        labels = [str(c) for c in range(NUM_CLASSES)]
        return {
            "predictions": grid,
            "confusion_matrix": Heatmap(confusion, labels, labels, title="confusion (one validation batch)",
                                        row_axis="true", col_axis="predicted", extra={"cmap": "Blues"}),
        }
