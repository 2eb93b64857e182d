"""Optical-flow training pairs rendered on the fly, a fixed held-out set, and the real evaluation scenes.

Training pairs are drawn from (seed, epoch, index): a sample is the same on any number of ranks and
workers, and every epoch shows new pairs. Validation and test are two fixed held-out sets rendered from
photos training never sees (`flow_scenes.HELDOUT_PHOTOS`), the same in every run.

A sample: {"inputs": (2, H, W, 3) uint8 frames, "target": (H, W, 2) float32 flow (dx, dy) in pixels,
"valid": (H, W) bool, "index": int64}.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.flow_scenes import (
    TRAIN_PHOTOS, FlowPair, MotionRange, graf_pair, heldout_pairs, motorcycle_pair, render_pair,
)
from perceiver_mt.data import EpochSeededDataset, InMemoryDataModule
from perceiver_mt.modalities import QUERY_INDEX, draw_query_subset

HELDOUT_SEEDS = {"val": 1001, "test": 1002}  # fixed apart from the run seed: every run sees the same pairs


def pair_sample(pair: FlowPair, index: int) -> dict[str, torch.Tensor]:
    return {"inputs": torch.from_numpy(pair.frames), "target": torch.from_numpy(pair.flow),
            "valid": torch.from_numpy(pair.valid), "index": torch.tensor(index, dtype=torch.long)}


class SyntheticFlowDataset(EpochSeededDataset):
    """`num_samples` pairs per epoch, pair i of epoch e rendered from rng (seed, e, i).

    With `train_queries` > 0 each sample also carries `query_index`: that many distinct pixels, drawn
    from the same rng, which the task decodes instead of all of them (subsampled decoding).
    """

    def __init__(self, num_samples: int, image_size: tuple[int, int], seed: int = 0, train_queries: int = 0,
                 **render_options: object):
        self.num_samples = num_samples
        self.image_size = image_size
        self.seed = seed
        self.train_queries = train_queries
        self.render_options = render_options

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, i))
        sample = pair_sample(render_pair(TRAIN_PHOTOS, self.image_size, rng, **self.render_options), i)
        pixels = self.image_size[0] * self.image_size[1]
        if 0 < self.train_queries < pixels:
            sample[QUERY_INDEX] = draw_query_subset(pixels, self.train_queries, rng)  # the pixels this step decodes
        return sample


class FlowPairs(Dataset):
    """A fixed list of pairs."""

    def __init__(self, pairs: list[FlowPair]):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return pair_sample(self.pairs[i], i)


def real_scenes(image_size: tuple[int, int]) -> dict[str, FlowPair]:
    """The real evaluation pairs at the working size: motorcycle always, graf where opencv-doc is installed."""
    scenes = {"motorcycle": motorcycle_pair(image_size)}
    graf = graf_pair(image_size)
    if graf is not None:
        scenes["graf"] = graf
    return scenes


class OpticalFlowDataModule(InMemoryDataModule):
    def __init__(self, batch_size: int = 8, image_size: tuple[int, int] = (64, 96), train_samples: int = 4096,
                 val_samples: int = 64, test_samples: int = 128, num_objects: int = 1, max_translation: float = 6.0,
                 max_rotation: float = 6.0, max_scale: float = 0.08, zoom: tuple[float, float] = (1.0, 3.0),
                 train_queries: int = 0, seed: int = 0, num_workers: int = 0):
        super().__init__(batch_size, seed, num_workers)
        self.image_size = tuple(image_size)  # (H, W) of every frame; the task's image_size must match
        self.train_samples = train_samples  # pairs per epoch (new ones every epoch)
        self.sizes = {"val": val_samples, "test": test_samples}
        self.train_queries = train_queries  # pixels decoded per training pair; 0 = all (set by the task)
        # Each layer moves by up to max_translation pixels, max_rotation degrees and 1 +- max_scale zoom; frames show
        # `zoom` photo pixels per frame pixel (more = sharper, more detailed views).
        self.render_options = {"num_objects": num_objects, "zoom": tuple(zoom),
                               "motion": MotionRange(translation=max_translation, rotation=max_rotation, scale=max_scale)}

    def build_splits(self) -> dict[str, Dataset]:
        splits: dict[str, Dataset] = {
            "train": SyntheticFlowDataset(self.train_samples, self.image_size, self.seed, self.train_queries,
                                          **self.render_options)}
        for split, count in self.sizes.items():
            splits[split] = FlowPairs(heldout_pairs(count, self.image_size, HELDOUT_SEEDS[split], **self.render_options))
        return splits
