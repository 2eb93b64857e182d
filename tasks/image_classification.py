"""Image classification at any resolution: DeepMind's three ImageNet Perceiver IO front ends, one learned query out.

    prep: pixels    one token per pixel (or k x k patch): its values + 2D Fourier features (DeepMind "Fourier")
          conv      a 7x7/2 conv + max-pool stem (224 -> 55 x 55 tokens) + 2D Fourier features ("conv")
    position: learned   a trainable vector per token instead (DeepMind "learned": per-pixel 1x1 conv + learned
                        positions, which the token projection expresses exactly)

With `project_tokens: false` the [content | position] features go to the encoder unprojected, as in
DeepMind's networks (model.input_channels must then equal their width, e.g. 3 + 258 = 261 at 64 bands).
Hugging Face's `PerceiverForImageClassification{Fourier,ConvProcessing,Learned}` convert into this task
(`python -m perceiver_mt.convert hf ...`). Data: `image_folder` (one folder per class) or `synthetic_images`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from perceiver_mt.modalities import ImagePatches, TokenAdapter, check_images
from perceiver_mt.modalities.classification import ClassificationOptions, ClassificationTask
from perceiver_mt.modalities.conv_stem import ConvImagePatches
from perceiver_mt.task import Batch
from perceiver_mt.tracking.media import Image, Images

PREPS = ("pixels", "conv")


@dataclass
class ImageClassificationOptions(ClassificationOptions):
    image_size: list[int] = field(default_factory=lambda: [224, 224])  # (H, W); inputs are (B, H, W, channels)
    channels: int = 3
    class_names: list[str] = field(default_factory=list)  # class order; empty = "0".."num_classes-1"
    num_classes: int = 1000  # used when class_names is empty
    prep: str = "pixels"  # pixels | conv
    patch_size: int = 1  # prep=pixels: k x k patches per token
    conv_channels: int = 64  # prep=conv: the stem's output channels
    position: str = "fourier"  # fourier | learned
    num_bands: int = 64  # Fourier bands per axis
    max_resolution: list[int] | None = None  # Fourier frequencies up to this / 2; None = the token grid's size
    learned_channels: int = 256  # position=learned: channels of each position vector
    project_tokens: bool = True  # map features to model.input_channels; false: feed them as they are
    # Per-channel normalisation inside the model, (image - mean) / std, e.g. ImageNet's for converted DeepMind
    # weights; empty = images go in as they are ([0, 1] from the DataModules and `make_batch`).
    pixel_mean: list[float] = field(default_factory=list)
    pixel_std: list[float] = field(default_factory=list)
    decoder_qk_channels: int | None = None  # None = query_channels
    decoder_v_channels: int | None = None  # None = the query/key width


class NormalizedImageAdapter(TokenAdapter):
    """`TokenAdapter` of images normalised per channel first (nothing stored: the statistics are options)."""

    def __init__(self, preprocessor: nn.Module, channels: int, project: bool, mean: list[float], std: list[float]):
        super().__init__(preprocessor, channels, project=project)
        self.register_buffer("mean", torch.tensor(mean or [0.0]), persistent=False)
        self.register_buffer("std", torch.tensor(std or [1.0]), persistent=False)

    def forward(self, batch: Batch) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        images = batch[self.key]  # (B, H, W, C)
        return super().forward({**batch, self.key: (images - self.mean) / self.std})


class ImageClassificationTask(ClassificationTask):
    options_class = ImageClassificationOptions
    default_data = "image_folder"
    shard_fields = {"inputs": "float16", "target": "int64", "index": "int64"}

    @property
    def class_names(self) -> list[str]:  # type: ignore[override]
        o = self.options
        return list(o.class_names) if o.class_names else [str(i) for i in range(o.num_classes)]

    def build_preprocessor(self) -> nn.Module:
        o = self.options
        resolution = tuple(o.max_resolution) if o.max_resolution else None
        if o.prep == "pixels":
            return ImagePatches(tuple(o.image_size), o.channels, o.patch_size, o.position, o.num_bands, resolution,
                                o.learned_channels)
        if o.prep == "conv":
            return ConvImagePatches(tuple(o.image_size), o.channels, o.conv_channels, o.position, o.num_bands,
                                    resolution, o.learned_channels)
        raise ValueError(f"task {self.name!r} option prep={o.prep!r} is unknown; choose one of {', '.join(PREPS)}")

    def build_adapter(self) -> nn.Module:
        o = self.options
        if len(o.pixel_mean) != len(o.pixel_std) or o.pixel_mean and len(o.pixel_mean) != o.channels:
            raise ValueError(f"task {self.name!r}: pixel_mean and pixel_std need one value per channel ({o.channels}), "
                             f"got {o.pixel_mean} and {o.pixel_std}")
        return NormalizedImageAdapter(self.build_preprocessor(), self.encoder.input_channels, o.project_tokens,
                                      o.pixel_mean, o.pixel_std)

    def decoder_config(self):  # noqa: ANN201
        config = super().decoder_config()
        config.qk_channels = self.options.decoder_qk_channels
        config.v_channels = self.options.decoder_v_channels
        return config

    def datamodule_defaults(self) -> dict[str, Any]:
        o = self.options
        return {"image_size": list(o.image_size), "channels": o.channels, "classes": list(o.class_names),
                "num_classes": len(self.class_names)}

    def check_batch(self, batch: Batch) -> None:
        check_images(self.name, batch["inputs"], tuple(self.options.image_size), self.options.channels)

    def make_batch(self, raw: Any) -> Batch:
        """(B, H, W, C) or (H, W, C) images: uint8 0..255, or floats in [0, 1]."""
        images = torch.as_tensor(np.asarray(raw))
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return {"inputs": images[None] if images.dim() == 3 and self.options.channels > 1 else images}

    def log_media(self, outputs: torch.Tensor, batch: Batch, count: int = 16) -> dict[str, Any]:
        images = batch["inputs"].float().clamp(0, 1).cpu().numpy()
        captions = self.captions(outputs, batch, count)
        images = images[..., 0] if images.shape[-1] == 1 else images  # grey: (H, W)
        grid = Images([Image(images[i], caption) for i, caption in enumerate(captions)])
        return {**super().log_media(outputs, batch), "predictions": grid}
