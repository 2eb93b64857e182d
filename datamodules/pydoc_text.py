"""Masked byte sequences of real English text: Python's own reference documentation (`pydoc_data.topics`).

Topics (not bytes) are split into train/val/test, so no held-out sentence was ever seen in training.
Masking is BERT-style: `mask_prob` of the positions are chosen; of those 80% become MASK, 10% a random
byte, 10% stay. Training draws fresh offsets and masks from (seed, epoch, index), so a sample is the
same on any number of ranks; evaluation masks are fixed for the whole run.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from perceiver_mt.data import EpochSeededDataset, InMemoryDataModule
from perceiver_mt.modalities.text import MASK_ID


def load_topics() -> dict[str, bytes]:
    from pydoc_data.topics import topics  # ships with CPython: no download

    return {name: text.encode("utf-8") for name, text in sorted(topics.items())}


def split_topics(topics: dict[str, bytes], val_fraction: float, test_fraction: float, seed: int) -> dict[str, bytes]:
    """Whole topics to each split, in a seeded order, until each split holds its share of the bytes."""
    names = list(topics)
    order = np.random.default_rng(seed).permutation(len(names))
    total = sum(len(t) for t in topics.values())
    quota = {"val": val_fraction * total, "test": test_fraction * total}
    parts: dict[str, list[bytes]] = {"train": [], "val": [], "test": []}
    sizes = {"val": 0, "test": 0}
    for i in order:
        text = topics[names[i]]
        split = next((s for s in ("val", "test") if sizes[s] < quota[s]), "train")
        if split != "train":
            sizes[split] += len(text)
        parts[split].append(text)
    return {split: b"\n".join(texts) for split, texts in parts.items()}


def mask_bytes(chunk: np.ndarray, mask_prob: float, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    chosen = rng.random(len(chunk)) < mask_prob
    if not chosen.any():  # every sample teaches something
        chosen[rng.integers(len(chunk))] = True
    inputs = chunk.astype(np.int64).copy()
    roll = rng.random(len(chunk))
    inputs[chosen & (roll < 0.8)] = MASK_ID
    random_swap = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[random_swap] = rng.integers(0, 256, random_swap.sum())
    return {
        "inputs": torch.from_numpy(inputs),
        "target": torch.from_numpy(chunk.astype(np.int64)),
        "loss_mask": torch.from_numpy(chosen),
    }


class MaskedBytesDataset(EpochSeededDataset):
    """Chunks of `seq_len` bytes. Training chunks start at a random shift that changes every epoch."""

    def __init__(self, text: bytes, seq_len: int, mask_prob: float, seed: int, train: bool):
        self.data = np.frombuffer(text, dtype=np.uint8)
        self.seq_len = seq_len
        self.mask_prob = mask_prob
        self.seed = seed
        self.train = train
        self.num_chunks = (len(self.data) - 1) // seq_len - (1 if train else 0)  # leave room for the shift

    def __len__(self) -> int:
        return self.num_chunks

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch if self.train else 0, i))
        start = i * self.seq_len + (int(rng.integers(self.seq_len)) if self.train else 0)
        sample = mask_bytes(self.data[start:start + self.seq_len], self.mask_prob, rng)
        sample["index"] = torch.tensor(i)
        return sample


class PydocTextDataModule(InMemoryDataModule):
    def __init__(self, seq_len: int = 128, mask_prob: float = 0.15, batch_size: int = 32, val_fraction: float = 0.05,
                 test_fraction: float = 0.05, split_seed: int = 0, seed: int = 0, num_workers: int = 0):
        super().__init__(batch_size, seed, num_workers)
        self.seq_len = seq_len
        self.mask_prob = mask_prob
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed

    def build_splits(self) -> dict[str, Dataset]:
        texts = split_topics(load_topics(), self.val_fraction, self.test_fraction, self.split_seed)
        return {
            split: MaskedBytesDataset(text, self.seq_len, self.mask_prob, self.seed + 1 if split == "train" else self.split_seed,
                                      train=split == "train")
            for split, text in texts.items()
        }
