"""Language identification on Debian's fortune cookies: quotes in English, German, Spanish, Italian,
Polish and Russian (UTF-8), about 80,000 after removing duplicates.

Packages (BSD and similar free licences, see each package's copyright file): `fortunes` (English),
`fortunes-de`, `fortunes-es`, `fortunes-it`, `fortunes-pl`, `fortunes-ru`. Install:
`apt-get install fortunes fortunes-de fortunes-es fortunes-it fortunes-pl fortunes-ru`.
Each package's own files are listed by dpkg, so files another package puts beside them (fortunes-it
installs Italian files into the English folder) are not mislabelled; offensive collections are left out.
A seeded split per language; training samples are a random window of `seq_len` bytes of a quote.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.class_folders import split_per_class
from perceiver_mt.data import EpochSeededDataset, InMemoryDataModule
from perceiver_mt.modalities.text import PAD_ID
from perceiver_mt.packaged_data import debian_path

LANGUAGES = {"en": "fortunes", "de": "fortunes-de", "es": "fortunes-es", "it": "fortunes-it", "pl": "fortunes-pl",
             "ru": "fortunes-ru"}


def package_files(package: str) -> list[Path]:
    """The fortune files Debian package `package` installed (from dpkg's own record of its files)."""
    listing = debian_path(package, f"/var/lib/dpkg/info/{package}.list", used_by="the fortunes language task")
    files = []
    for line in listing.read_text().splitlines():
        path = Path(line)
        if ("/games/fortunes" in line and path.suffix not in (".dat", ".u8") and "/off/" not in line
                and not line.endswith("-pre") and path.is_file() and not path.is_symlink()):
            files.append(path)
    return sorted(files)


def load_quotes() -> tuple[list[bytes], np.ndarray]:
    """Every distinct quote (UTF-8 bytes, whitespace-trimmed) and its language index (order of LANGUAGES)."""
    quotes, labels, seen = [], [], set()
    for label, package in enumerate(LANGUAGES.values()):
        for path in package_files(package):
            for entry in path.read_bytes().split(b"\n%\n"):
                entry = entry.strip().strip(b"%").strip()
                if entry and entry not in seen:
                    seen.add(entry)
                    quotes.append(entry)
                    labels.append(label)
    return quotes, np.asarray(labels)


class QuoteDataset(EpochSeededDataset):
    """Quotes -> {"inputs": (seq_len,) byte ids (PAD after a short quote), "target", "index"}."""

    def __init__(self, quotes: list[bytes], labels: np.ndarray, ids: np.ndarray, seq_len: int, train: bool,
                 seed: int = 0):
        self.quotes = quotes
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.ids = torch.as_tensor(ids, dtype=torch.long)
        self.seq_len = seq_len
        self.train = train
        self.seed = seed

    def __len__(self) -> int:
        return len(self.quotes)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        quote = self.quotes[i]
        start = 0
        if self.train and len(quote) > self.seq_len:
            start = int(np.random.default_rng((self.seed, self.epoch, i)).integers(len(quote) - self.seq_len + 1))
        window = list(quote[start:start + self.seq_len])
        ids = torch.tensor(window + [PAD_ID] * (self.seq_len - len(window)), dtype=torch.long)
        return {"inputs": ids, "target": self.labels[i], "index": self.ids[i]}


class FortunesDataModule(InMemoryDataModule):
    def __init__(self, seq_len: int = 128, batch_size: int = 32, val_fraction: float = 0.05,
                 test_fraction: float = 0.1, split_seed: int = 0, seed: int = 0, num_workers: int = 0):
        super().__init__(batch_size, seed, num_workers)
        self.seq_len = seq_len
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed

    def build_splits(self) -> dict[str, Dataset]:
        quotes, labels = load_quotes()
        splits = split_per_class(labels, {"val": self.val_fraction, "test": self.test_fraction}, self.split_seed)
        return {split: QuoteDataset([quotes[i] for i in ids], labels[ids], ids, self.seq_len, split == "train",
                                    self.seed)
                for split, ids in splits.items()}
