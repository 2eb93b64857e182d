"""Digits as point clouds: each point's intensity next to 2D Fourier features of its coordinates, one
learned query out. Padded points (sets differ in size) have no effect. Data: datamodules/mnist_points.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from perceiver_mt.modalities import PointFeatures, check_points, pad_point_sets
from perceiver_mt.modalities.classification import ClassificationOptions, ClassificationTask
from perceiver_mt.task import Batch
from perceiver_mt.tracking.media import Image, Images


@dataclass
class MnistPointsOptions(ClassificationOptions):
    num_bands: int = 8  # Fourier bands per coordinate axis
    max_resolution: int = 28  # highest frequency: max_resolution / 2 cycles across [-1, 1]


class MnistPointsTask(ClassificationTask):
    options_class = MnistPointsOptions
    default_data = "mnist_points"
    class_names = [str(d) for d in range(10)]
    shard_fields = {"inputs.coords": "float32", "inputs.features": "float32", "inputs.pad_mask": "bool",
                    "target": "uint8", "index": "int64"}

    def build_preprocessor(self) -> nn.Module:
        o = self.options
        return PointFeatures(coord_dims=2, feature_channels=1, num_bands=o.num_bands,
                             max_resolution=(o.max_resolution, o.max_resolution))

    def check_batch(self, batch: Batch) -> None:
        check_points(self.name, batch["inputs"], coord_dims=2, feature_channels=1)

    def make_batch(self, raw: Any) -> Batch:
        """A list of point sets, each (N_i, 3): x, y in [-1, 1] (y up) and intensity in [0, 1]."""
        sets = [np.asarray(points, dtype=np.float32) for points in raw]
        return {"inputs": pad_point_sets([s[:, :2] for s in sets], [s[:, 2:] for s in sets])}

    def log_media(self, outputs: torch.Tensor, batch: Batch, count: int = 16) -> dict[str, Any]:
        """Each point set drawn as dots on a 56x56 canvas, captioned with prediction and truth."""
        captions = self.captions(outputs, batch, count)
        points = batch["inputs"]
        pictures = []
        for i, caption in enumerate(captions):
            keep = ~points["pad_mask"][i].cpu()
            xy = points["coords"][i].cpu()[keep].numpy()
            canvas = np.zeros((56, 56))
            cols = np.clip(np.round((xy[:, 0] + 1) * 27.5), 0, 55).astype(int)
            rows = np.clip(np.round((1 - xy[:, 1]) * 27.5), 0, 55).astype(int)
            canvas[rows, cols] = points["features"][i].cpu()[keep, 0].numpy()
            pictures.append(Image(canvas, caption))
        return {**super().log_media(outputs, batch), "point_sets": Images(pictures)}
