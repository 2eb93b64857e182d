"""Iris species classification as a perceiver-mt task plugin: the whole task in one file.

Registered by this package's pyproject.toml; nothing in perceiver-mt is edited:

    [project.entry-points."perceiver_mt.tasks"]
    iris = "iris_plugin.iris_task:IrisTask"
    [project.entry-points."perceiver_mt.datamodules"]
    iris = "iris_plugin.iris_task:IrisDataModule"
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from perceiver_mt.data import InMemoryDataModule
from perceiver_mt.model import DecoderConfig
from perceiver_mt.task import Batch, Task

NUM_FEATURES, NUM_CLASSES = 4, 3


@dataclass
class IrisOptions:
    query_channels: int = 16


# --- input adapter: each measurement is one token (its value + which measurement it is) -------------
class MeasurementAdapter(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.which = nn.Parameter(torch.randn(NUM_FEATURES, channels) * 0.02)
        self.value = nn.Linear(1, channels)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.value(batch["inputs"][..., None]) + self.which  # (B, 4, C)


# --- output query: one learned query per sample ---------------------------------------------------
class OneQuery(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, channels) * 0.02)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.query.expand(batch["inputs"].shape[0], -1, -1)  # (B, 1, Cq)


# --- the task: head, loss, metrics -----------------------------------------------------------------
class IrisTask(Task):
    options_class = IrisOptions
    default_data = "iris"

    def build_adapter(self) -> nn.Module:
        return MeasurementAdapter(self.encoder.input_channels)

    def build_queries(self) -> nn.Module:
        return OneQuery(self.options.query_channels)

    def decoder_config(self) -> DecoderConfig:
        return DecoderConfig(query_channels=self.options.query_channels)

    def build_head(self) -> nn.Module:
        return nn.Sequential(nn.Flatten(1), nn.Linear(self.options.query_channels, NUM_CLASSES))

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(outputs, batch["target"])

    def build_metrics(self) -> MetricCollection:
        return MetricCollection({"acc": MulticlassAccuracy(NUM_CLASSES, average="micro")})

    def check_batch(self, batch: Batch) -> None:
        if tuple(batch["inputs"].shape[1:]) != (NUM_FEATURES,):
            raise ValueError(f"task {self.name!r} takes (B, 4) measurements, got {tuple(batch['inputs'].shape)}")


# --- data: scikit-learn's bundled iris measurements, a stratified 100/25/25 split, standardised --------
class IrisDataset(Dataset):
    def __init__(self, features: np.ndarray, labels: np.ndarray, ids: np.ndarray):
        self.features = torch.as_tensor(features, dtype=torch.float32)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.ids = torch.as_tensor(ids, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"inputs": self.features[i], "target": self.labels[i], "index": self.ids[i]}


def split_ids(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """100/25/25 sample ids with every species in each split in its overall share (stratified)."""
    from sklearn.model_selection import train_test_split

    ids = np.arange(len(labels))
    train, rest = train_test_split(ids, train_size=100, stratify=labels, random_state=seed)
    val, test = train_test_split(rest, train_size=25, stratify=labels[rest], random_state=seed)
    return {"train": train, "val": val, "test": test}


class IrisDataModule(InMemoryDataModule):
    # `seed` is the run's seed, passed in because the constructor takes it (as `task` would be).
    def __init__(self, batch_size: int = 16, seed: int = 0, split_seed: int = 0):
        super().__init__(batch_size, seed)
        self.split_seed = split_seed  # fixed apart from the run seed: every run is tested on the same samples

    def build_splits(self) -> dict[str, Dataset]:
        from sklearn.datasets import load_iris

        iris = load_iris()
        splits = split_ids(iris.target, self.split_seed)
        # Standardised with the training split's statistics only: the test samples must not shape the inputs.
        train = iris.data[splits["train"]]
        mean, std = train.mean(0), train.std(0)
        return {split: IrisDataset((iris.data[ids] - mean) / std, iris.target[ids], ids) for split, ids in splits.items()}
