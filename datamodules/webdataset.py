"""Any task's data from WebDataset tar shards: local paths, brace-expanded lists, file:, pipe:, http(s):, gs:, s3:...

    python -m perceiver_mt.shards write --task digits --out /data/digits --shard-size 500
    python train.py tasks.digits.data.name=webdataset tasks.digits.data.root=/data/digits

`root` is a folder written by the shard writer (`<split>-NNNNNN.tar` + meta.json); `train_urls`,
`val_urls`, `test_urls` name shards directly and override it, e.g. '/data/digits/train-{000000..000003}.tar'.
Records are decoded by the task's own codec (`perceiver_mt.shards.codec.decoder_for`); the task instance
is passed in as `task` by the run. Training yields the same number of batches on every rank; evaluation
sees every sample once across ranks (see `perceiver_mt.shards.reader`). Bad shards or records are
skipped and the samples lost counted per split (`data_stats(split)["skipped_samples"]`, logged as
`data/<task>/skipped_samples` in training and `<split>/<task>/skipped_samples` in evaluation), or fatal
with `strict=True`.
"""

from __future__ import annotations

import glob
import logging
import os
from functools import partial
from typing import Any

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from perceiver_mt.data import rank_and_world
from perceiver_mt.shards.codec import decode_fields, decoder_for
from perceiver_mt.shards.reader import (
    EvalShardStream, SkipCounter, TrainShardStream, count_records, expand_urls, read_meta, stored_counts,
)
from perceiver_mt.task import Task

SPLITS = ("train", "val", "test")
log = logging.getLogger("perceiver_mt.shards")


class WebDatasetDataModule(LightningDataModule):
    def __init__(
        self,
        root: str | None = None,
        train_urls: str | list[str] | None = None,
        val_urls: str | list[str] | None = None,
        test_urls: str | list[str] | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        shuffle_buffer: int = 1000,
        num_train_samples: int | None = None,
        batches_per_epoch: int | None = None,
        strict: bool = False,
        seed: int = 0,
        task: Task | None = None,
    ):
        super().__init__()
        for name, value, least in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                                   ("shuffle_buffer", shuffle_buffer, 0), ("num_train_samples", num_train_samples, 1),
                                   ("batches_per_epoch", batches_per_epoch, 1)):
            if value is not None and value < least:
                raise ValueError(f"{name}={value} must be >= {least}")
        if root and "://" not in root and not root.startswith(("pipe:", "file:")) and not os.path.isdir(root):
            raise ValueError(f"root={root!r} is not a folder: give the folder the shard writer wrote "
                             "(<split>-NNNNNN.tar and meta.json), or the shards as train_urls/val_urls/test_urls")
        self.root = root.rstrip("/") if root else None  # folder (or URL prefix) from the shard writer
        self.urls = {"train": train_urls, "val": val_urls, "test": test_urls}  # override `root`, per split
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer  # samples held for shuffling; 0 or 1 = shard order only
        self.declared_train_samples = num_train_samples  # needed when shards have no meta.json (pipe: URLs)
        self.batches_per_epoch = batches_per_epoch  # per rank; default: one pass of the data over all ranks
        self.strict = strict  # bad data is fatal instead of skipped
        self.seed = seed
        self.task = task
        self.num_train_samples: int | None = None
        self.shards: dict[str, list[str]] = {}
        self.counts: dict[str, list[int]] = {}  # samples per shard of each evaluation split
        self.skips: dict[str, SkipCounter] = {}  # samples lost to bad data, per split

    def setup(self, stage: str | None = None) -> None:
        if not self.skips:  # created here, not in __init__: shared memory must not cross a pickled spawn
            self.skips = {split: SkipCounter(self.task.name if self.task else "webdataset", self.strict)
                          for split in SPLITS}
        if stage in ("fit", None) and self.num_train_samples is None:
            self.num_train_samples = self._count_train()

    def train_dataloader(self) -> DataLoader:
        rank, world = rank_and_world(self)
        batches = self.batches_per_epoch or max(1, self.num_train_samples // (world * self.batch_size))
        stream = TrainShardStream(self._shards("train"), self._decoder(), self.skips["train"], self.batch_size, batches,
                                  rank, self.seed, self.shuffle_buffer, counts=stored_counts(self._shards("train")))
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def data_stats(self, split: str = "train") -> dict[str, float]:
        """Counters of one split for the run's logs: samples lost to bad data so far."""
        return {"skipped_samples": float(self.skips[split].count if self.skips else 0)}

    def _decoder(self) -> Any:
        """The task's record decoder; without a task (DataModule used on its own), the base Task's codec."""
        return decoder_for(self.task) if self.task is not None else partial(decode_fields, dtypes=Task.shard_fields)

    def _eval_loader(self, split: str) -> DataLoader:
        rank, world = rank_and_world(self)
        stream = EvalShardStream(self._shards(split), self._counts(split), self._decoder(), self.skips[split],
                                 self.batch_size, rank, world)
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers)

    def _shards(self, split: str) -> list[str]:
        if split not in self.shards:
            self.shards[split] = self._resolve(split)
        return self.shards[split]

    def _resolve(self, split: str) -> list[str]:
        if self.urls[split]:
            return expand_urls(self.urls[split])
        if not self.root:
            raise ValueError(f"no shards for split {split!r}: set data.root (a folder from the shard writer) "
                             f"or data.{split}_urls")
        meta = read_meta(f"{self.root}/{split}-000000.tar")
        if meta is not None and split in meta["splits"]:
            return [f"{self.root}/{name}" for name in meta["splits"][split]["shards"]]
        local = sorted(glob.glob(os.path.join(self.root, f"{split}-*.tar")))
        if local:
            return local
        raise ValueError(f"no {split!r} shards under {self.root!r}: expected {split}-NNNNNN.tar files or a meta.json "
                         "listing them")

    def _counts(self, split: str) -> list[int]:
        """Samples per shard: the writer's meta.json, else one counting pass (evaluation splits are small)."""
        if split not in self.counts:
            urls = self._shards(split)
            stored = stored_counts(urls)
            if stored is None:
                log.info("counting the records of %d %s shards (no meta.json beside them)", len(urls), split)
            self.counts[split] = [stored[url] for url in urls] if stored else [count_records(url) for url in urls]
        return self.counts[split]

    def _count_train(self) -> int:
        if self.declared_train_samples is not None:
            return self.declared_train_samples
        counts = stored_counts(self._shards("train"))
        if counts is None:
            raise ValueError("training shards have no meta.json listing their sample counts (e.g. pipe: URLs): "
                             "set data.num_train_samples")
        return sum(counts.values())

