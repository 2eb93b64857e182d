"""Image classification data: a folder per class in any format Pillow reads, or synthetic images for benchmarks.

    root/cat/001.jpg  root/cat/002.png  root/dog/a.jpeg  ...     (data.name: image_folder, data.root: root)

Images are decoded once, converted to RGB (or grey for `channels: 1`), resized to `image_size` and kept as
uint8; samples are (H, W, C) floats in [0, 1]. The split is seeded per class (as the audio folder's).
`synthetic_images` draws seeded random images and labels, for speed measurements at any shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.class_folders import find_class_files, split_per_class
from perceiver_mt.data import InMemoryDataModule


class ImageDataset(Dataset):
    """uint8 images (N, H, W, C) -> {"inputs": (H, W, C) float32 in [0, 1], "target", "index"}."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, ids: np.ndarray):
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.ids = torch.as_tensor(ids, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"inputs": self.images[i].float() / 255.0, "target": self.labels[i], "index": self.ids[i]}


def image_extensions() -> set[str]:
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def load_image(path: Path, image_size: Sequence[int], channels: int) -> np.ndarray:
    """One image file -> (H, W, channels) uint8 at `image_size` (H, W)."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB").resize((image_size[1], image_size[0]),
                                                                       Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8)
    return pixels[..., None] if channels == 1 else pixels


class ImageFolderDataModule(InMemoryDataModule):
    def __init__(self, root: str = "", classes: list[str] | None = None, image_size: list[int] | None = None,
                 channels: int = 3, num_classes: int | None = None, batch_size: int = 32, val_fraction: float = 0.15,
                 test_fraction: float = 0.15, split_seed: int = 0, seed: int = 0, num_workers: int = 0):
        super().__init__(batch_size, seed, num_workers)
        self.root = Path(root)
        self.classes = list(classes or [])  # folder names in class order; empty = every folder, sorted
        self.image_size = list(image_size or [224, 224])
        self.channels = channels
        self.num_classes = num_classes  # the task's class count: the folders must not exceed it
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed

    def find_files(self) -> tuple[list[Path], np.ndarray]:
        return find_class_files(self.root, self.classes, image_extensions(), "image", self.num_classes)

    def build_splits(self) -> dict[str, Dataset]:
        files, labels = self.find_files()
        images = np.stack([load_image(path, self.image_size, self.channels) for path in files])
        splits = split_per_class(labels, {"val": self.val_fraction, "test": self.test_fraction}, self.split_seed)
        return {split: ImageDataset(images[ids], labels[ids], ids) for split, ids in splits.items()}


class SyntheticImagesDataModule(InMemoryDataModule):
    """Seeded random uint8 images with random labels: `num_samples` per split, for speed measurements."""

    def __init__(self, image_size: list[int] | None = None, channels: int = 3, num_classes: int = 1000,
                 num_samples: int = 256, batch_size: int = 32, seed: int = 0, num_workers: int = 0,
                 classes: list[str] | None = None):
        super().__init__(batch_size, seed, num_workers)
        self.image_size = list(image_size or [224, 224])
        self.channels = channels
        self.num_classes = num_classes
        self.num_samples = num_samples

    def build_splits(self) -> dict[str, Dataset]:
        splits = {}
        for offset, split in enumerate(("train", "val", "test")):
            rng = np.random.default_rng((self.seed, offset))
            images = rng.integers(0, 256, (self.num_samples, *self.image_size, self.channels), dtype=np.uint8)
            labels = rng.integers(0, self.num_classes, self.num_samples)
            splits[split] = ImageDataset(images, labels, np.arange(self.num_samples))
        return splits
