"""Audio classification from a folder per class, in any format libsndfile reads (WAV, FLAC, OGG, MP3, ...):

    root/crow/001.wav  root/crow/002.flac  root/owl/a.ogg  ...

Clips are decoded once (mixed down to mono, resampled to `sample_rate`) and cut or zero-padded to
`num_samples`: centred for evaluation, at a random offset in training. A seeded split per class.
Training can also play clips at a random speed in `speed_range` (pitch and tempo together, drawn
log-uniformly), which stands in for other voices and instruments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.class_folders import find_class_files, split_per_class
from perceiver_mt.data import EpochSeededDataset, InMemoryDataModule
from perceiver_mt.modalities.audio import fit_length, load_audio, resample


def audio_extensions() -> set[str]:
    import soundfile

    return {f".{name.lower()}" for name in soundfile.available_formats()} | {".ogg", ".oga", ".opus"}


class ClipDataset(EpochSeededDataset):
    """Clips (T,) mono or (channels, T) of any length -> {"inputs": (num_samples,) or (channels, num_samples)
    float32, "target", "index"}."""

    def __init__(self, clips: Sequence[np.ndarray], labels: Sequence[int], ids: Sequence[int], num_samples: int,
                 train: bool, speed_range: Sequence[float] = (1.0, 1.0), seed: int = 0):
        self.clips = list(clips)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)
        self.num_samples = num_samples
        self.train = train
        self.speed_range = tuple(speed_range)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        clip = self.clips[i]
        offset = None
        if self.train:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            speed = float(np.exp(rng.uniform(*np.log(self.speed_range))))  # log-uniform: as often up as down
            if speed != 1:  # resampled to 1/speed as many samples, played at the old rate: faster and higher
                clip = resample(clip, round(speed * 1000), 1000)
            spare = abs(clip.shape[-1] - self.num_samples)
            offset = int(rng.integers(spare + 1))
        samples = fit_length(clip, self.num_samples, offset)
        return {"inputs": torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)),
                "target": self.labels[i], "index": self.ids[i]}


class AudioFolderDataModule(InMemoryDataModule):
    def __init__(self, root: str = "", classes: list[str] | None = None, sample_rate: int = 16000,
                 num_samples: int = 16000, batch_size: int = 32, val_fraction: float = 0.15,
                 test_fraction: float = 0.15, speed_range: list[float] | None = None, split_seed: int = 0,
                 seed: int = 0, num_workers: int = 0, mono: bool = True):
        super().__init__(batch_size, seed, num_workers)
        self.root = Path(root)
        self.classes = list(classes or [])  # folder names in class order; empty = every folder, sorted
        self.sample_rate = sample_rate
        self.num_samples = num_samples
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.speed_range = list(speed_range or [1.0, 1.0])
        self.split_seed = split_seed
        self.mono = mono  # False keeps every channel: only for tasks that take multi-channel audio

    def find_files(self) -> tuple[list[Path], np.ndarray]:
        return find_class_files(self.root, self.classes, audio_extensions(), "audio")

    def build_splits(self) -> dict[str, Dataset]:
        files, labels = self.find_files()
        clips = [load_audio(path, self.sample_rate, mono=self.mono)[0] for path in files]
        splits = split_per_class(labels, {"val": self.val_fraction, "test": self.test_fraction}, self.split_seed)
        return {split: ClipDataset([clips[i] for i in ids], labels[ids], ids, self.num_samples, split == "train",
                                   self.speed_range if split == "train" else (1.0, 1.0), self.seed)
                for split, ids in splits.items()}
