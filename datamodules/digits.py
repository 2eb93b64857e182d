"""scikit-learn's bundled UCI handwritten digits (1,797 images) with a fixed seeded train/val/test split."""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from perceiver_mt.data import eval_loader, train_loader


class DigitsDataset(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, ids: np.ndarray):
        self.images = torch.as_tensor(images, dtype=torch.float32) / 16.0  # (N, 8, 8) in [0, 1]
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.ids = torch.as_tensor(ids, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"inputs": self.images[i], "target": self.labels[i], "index": self.ids[i]}


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    return {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}


class DigitsDataModule(LightningDataModule):
    def __init__(self, batch_size: int = 64, val_fraction: float = 0.15, test_fraction: float = 0.15,
                 split_seed: int = 0, seed: int = 0, num_workers: int = 0):
        super().__init__()
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed  # fixed apart from the run seed: every run sees the same test set
        self.seed = seed
        self.num_workers = num_workers
        self.datasets: dict[str, DigitsDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        from sklearn.datasets import load_digits  # the data ships inside scikit-learn: no download

        digits = load_digits()
        splits = split_indices(len(digits.target), self.val_fraction, self.test_fraction, self.split_seed)
        self.datasets = {
            split: DigitsDataset(digits.images[ids], digits.target[ids], ids) for split, ids in splits.items()
        }
        self.num_train_samples = len(self.datasets["train"])

    def train_dataloader(self) -> DataLoader:
        return train_loader(self, self.datasets["train"], self.batch_size, self.seed, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self, self.datasets["val"], self.batch_size, self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return eval_loader(self, self.datasets["test"], self.batch_size, self.num_workers)
