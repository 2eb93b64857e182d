"""scikit-learn's bundled UCI handwritten digits (1,797 images) with a fixed seeded train/val/test split."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from perceiver_mt.data import EpochSeededDataset, InMemoryDataModule


class ShiftedImages(EpochSeededDataset):
    """Grey images (N, H, W) with values in [0, max_value], served in [0, 1]. With `max_shift` > 0 each image
    moves by up to that many pixels per axis (zero fill), drawn from (seed, epoch, index) so a sample is the
    same on any number of ranks. (The 8x8 digits here, MNIST in datamodules/mnist.py.)"""

    def __init__(self, images: np.ndarray, labels: np.ndarray, ids: np.ndarray, max_value: float,
                 max_shift: int = 0, seed: int = 0):
        self.images = torch.as_tensor(images, dtype=torch.float32) / max_value
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.ids = torch.as_tensor(ids, dtype=torch.long)
        self.max_shift = max_shift
        self.seed = seed

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = self.images[i]
        if self.max_shift:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            image = shift_image(image, *(int(d) for d in rng.integers(-self.max_shift, self.max_shift + 1, 2)))
        return {"inputs": image, "target": self.labels[i], "index": self.ids[i]}


def shift_image(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move an (H, W) image by (dy, dx) pixels; what leaves the frame is dropped, what enters is 0."""
    H, W = image.shape
    shifted = torch.zeros_like(image)
    shifted[max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = image[max(-dy, 0):H - max(dy, 0), max(-dx, 0):W - max(dx, 0)]
    return shifted


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    return {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}


class DigitsDataModule(InMemoryDataModule):
    def __init__(self, batch_size: int = 64, val_fraction: float = 0.15, test_fraction: float = 0.15,
                 split_seed: int = 0, seed: int = 0, num_workers: int = 0, max_shift: int = 0):
        super().__init__(batch_size, seed, num_workers)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed  # fixed apart from the run seed: every run sees the same test set
        self.max_shift = max_shift  # training-time augmentation: random shifts of up to this many pixels

    def build_splits(self) -> dict[str, Dataset]:
        from sklearn.datasets import load_digits  # the data ships inside scikit-learn: no download

        digits = load_digits()
        splits = split_indices(len(digits.target), self.val_fraction, self.test_fraction, self.split_seed)
        return {
            split: ShiftedImages(digits.images[ids], digits.target[ids], ids, 16.0,
                                 max_shift=self.max_shift if split == "train" else 0, seed=self.seed)
            for split, ids in splits.items()
        }
