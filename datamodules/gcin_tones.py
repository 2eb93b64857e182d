"""Mandarin tones from Debian's `gcin-voice`: 2,358 recorded syllables by two speakers (44.1 kHz OGG).

Files are `<bopomofo syllable><tone>/<speaker>.ogg`: no tone digit = tone 1, else 2, 3 or 4 (the 13
folders ending in "1" are left out: their tone is unclear). Speaker "3" (1,200 clips, GPL-3/LGPL-3)
and speaker "5" (1,158 clips, CC-BY-3.0). Training uses one speaker (less a validation share of its
syllables) and testing the other, so the test measures tones in a voice never heard. The default trains on
speaker 5, whose contours are the textbook ones (flat, rising, dipping, falling, median F0 350 Hz), and tests
on speaker 3 (median 130 Hz, some contours off their label: see the README's figures).
Install: `apt-get install gcin-voice`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from datamodules.audio_folder import ClipDataset
from datamodules.class_folders import split_per_class
from perceiver_mt.data import InMemoryDataModule
from perceiver_mt.modalities.audio import load_audio
from perceiver_mt.packaged_data import debian_path

GCIN_VOICES = "/usr/share/gcin-voice/ogg"
SPEAKERS = ("3", "5")
TONES = ("1", "2", "3", "4")


def tone_of(folder: str) -> int | None:
    """Class index 0..3 of a syllable folder's tone, or None where the name leaves it unclear."""
    last = folder[-1]
    if last in "234":
        return int(last) - 1
    return None if last.isdigit() else 0


def find_clips(root: str | Path = GCIN_VOICES) -> list[tuple[Path, int, str]]:
    """(file, tone class, speaker) of every clip whose tone is known, in a fixed order."""
    root = debian_path("gcin-voice", root, used_by="the mandarin_tones task")
    clips = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        tone = tone_of(folder.name)
        if tone is None:
            continue
        clips += [(path, tone, path.stem) for path in sorted(folder.glob("*.ogg")) if path.stem in SPEAKERS]
    return clips


@functools.lru_cache(maxsize=2)  # decoded once per process however many DataModules read them
def decode_clips(paths: tuple[Path, ...], sample_rate: int) -> list[np.ndarray]:
    return [load_audio(path, sample_rate)[0] for path in paths]


class GcinTonesDataModule(InMemoryDataModule):
    def __init__(self, sample_rate: int = 16000, num_samples: int = 8000, train_speaker: str = "5",
                 batch_size: int = 32, val_fraction: float = 0.15, speed_range: list[float] | None = None,
                 split_seed: int = 0, seed: int = 0, num_workers: int = 0):
        super().__init__(batch_size, seed, num_workers)
        if train_speaker not in SPEAKERS:
            raise ValueError(f"train_speaker={train_speaker!r} is unknown; choose one of {', '.join(SPEAKERS)}")
        self.sample_rate = sample_rate
        self.num_samples = num_samples
        self.train_speaker = train_speaker  # the other speaker is the test set
        self.val_fraction = val_fraction  # of the training speaker's clips, per tone
        # Training clips play at a random speed (pitch and tempo together), as another speaker might say
        # them; down to half speed because speaker 3 speaks about 1.8x slower than speaker 5 (voiced part
        # 0.39 s against 0.22 s, median): held-out accuracy after 1,700 steps 0.49 against 0.41 with 0.8-1.25.
        # The tones task also shifts pitch alone, over a wider range (its `pitch_shift` option).
        self.speed_range = list(speed_range or [0.5, 1.25])
        self.split_seed = split_seed

    def build_splits(self) -> dict[str, Dataset]:
        found = find_clips()
        clips = decode_clips(tuple(path for path, _, _ in found), self.sample_rate)
        labels = np.asarray([tone for _, tone, _ in found])
        speakers = np.asarray([speaker for _, _, speaker in found])
        own = np.flatnonzero(speakers == self.train_speaker)
        parts = split_per_class(labels[own], {"val": self.val_fraction}, self.split_seed)
        other = np.random.default_rng(self.split_seed).permutation(np.flatnonzero(speakers != self.train_speaker))
        splits = {"train": own[parts["train"]], "val": own[parts["val"]], "test": other}  # tones mixed, as in val
        return {split: ClipDataset([clips[i] for i in ids], labels[ids], ids, self.num_samples, split == "train",
                                   self.speed_range if split == "train" else (1.0, 1.0), self.seed)
                for split, ids in splits.items()}
