"""Combining per-task DataModules into one multi-task stream, and rank-aware loaders for them.

Each task's DataModule is an ordinary `LightningDataModule`. `MultiTaskDataModule` drives them:
training yields `{task: batch}` per step (one task, or all of them in "all" mode) with the task chosen
by `TaskSampler`; validation and test return one loader per task, in sorted task order.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator, Sized
from typing import Any, Callable

from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from perceiver_mt.errors import ConfigError
from perceiver_mt.sampling import TaskSampler


def rank_and_world(datamodule: LightningDataModule) -> tuple[int, int]:
    trainer = getattr(datamodule, "trainer", None)
    if trainer is None:
        return 0, 1
    return trainer.global_rank, trainer.world_size


class EvalShardBatchSampler(Sampler[list[int]]):
    """Rank r of w takes indices r, r+w, r+2w, ... in the same number of batches on every rank (batch sizes
    differ by at most one): every sample exactly once across ranks, no padding.

    `DistributedSampler` pads with repeated samples, which double-counts evaluation metrics. Equal batch
    counts are still needed: under FSDP each evaluation forward all-gathers parameters, so a rank with one
    batch more than the others would wait forever.
    """

    def __init__(self, num_samples: int, rank: int, world_size: int, batch_size: int):
        indices = list(range(rank, num_samples, world_size))
        num_batches = math.ceil(math.ceil(num_samples / world_size) / batch_size)
        if len(indices) < num_batches:
            raise ValueError(f"{num_samples} evaluation samples cannot fill {num_batches} batches on each of "
                             f"{world_size} ranks: use a larger batch size or fewer ranks")
        bounds = [round(i * len(indices) / num_batches) for i in range(num_batches + 1)]
        self.batches = [indices[a:b] for a, b in zip(bounds, bounds[1:])]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def train_loader(
    datamodule: LightningDataModule, dataset: Dataset, batch_size: int, seed: int, num_workers: int = 0, **kwargs: Any
) -> DataLoader:
    """Shuffled loader over this rank's disjoint share of `dataset` (drop_last: no sample on two ranks)."""
    rank, world = rank_and_world(datamodule)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    # Workers are not persistent: each pass re-forks them with the dataset's current epoch.
    return DataLoader(dataset, batch_size, sampler=sampler, drop_last=True, num_workers=num_workers, **kwargs)


def eval_loader(
    datamodule: LightningDataModule, dataset: Dataset, batch_size: int, num_workers: int = 0, **kwargs: Any
) -> DataLoader:
    rank, world = rank_and_world(datamodule)
    batches = EvalShardBatchSampler(len(dataset), rank, world, batch_size)  # type: ignore[arg-type]
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, **kwargs)


class EpochSeededDataset(Dataset):
    """A map-style dataset whose training samples are drawn from (seed, epoch, index), e.g. augmentations: the
    multi-task stream calls `set_epoch` at each epoch, so a resumed run draws what an unbroken one would."""

    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class InMemoryDataModule(LightningDataModule):
    """A task DataModule whose splits are map-style datasets built once by `build_splits()`.

    Subclasses only say how to build "train", "val" and "test"; the loaders shard them by rank.
    """

    def __init__(self, batch_size: int, seed: int = 0, num_workers: int = 0):
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size={batch_size} must be >= 1" if batch_size < 1 else
                             f"num_workers={num_workers} must be >= 0 (0 loads in the training process)")
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.datasets: dict[str, Dataset] = {}

    def build_splits(self) -> dict[str, Dataset]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:
            self.datasets = self.build_splits()
            self.num_train_samples = len(self.datasets["train"])  # type: ignore[arg-type]

    def train_dataloader(self) -> DataLoader:
        return train_loader(self, self.datasets["train"], self.batch_size, self.seed, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self, self.datasets["val"], self.batch_size, self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return eval_loader(self, self.datasets["test"], self.batch_size, self.num_workers)


class _EndlessLoader:
    """Re-iterates a loader forever, advancing its sampler's epoch so each pass reshuffles.

    Its position (epoch, batches drawn in that pass) goes into checkpoints; a restored loader re-creates
    the pass and drops the batches already drawn (data loading only), so the next batch is the same.
    """

    def __init__(self, loader: Any):
        self.loader = loader
        self.epoch = 0
        self.offset = 0  # batches drawn in the current pass
        self.iterator: Iterator | None = None

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def restore(self, state: dict[str, int]) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self.iterator = None

    def next(self) -> Any:
        empty_passes = 0
        while True:
            if self.iterator is None:
                sampler = getattr(self.loader, "sampler", None)
                dataset = getattr(self.loader, "dataset", None)
                for reshuffled in (sampler, dataset):  # datasets with per-epoch randomness (masks, crops)
                    if hasattr(reshuffled, "set_epoch"):
                        reshuffled.set_epoch(self.epoch)
                self.iterator = iter(self.loader)
                for _ in range(self.offset):  # restored mid-pass: skip what was already trained on
                    next(self.iterator)
            try:
                batch = next(self.iterator)
            except StopIteration:
                self.iterator = None
                self.epoch += 1
                self.offset = 0
                empty_passes += 1
                if empty_passes > 1:  # a whole pass without a batch: re-iterating would spin forever
                    raise EmptyLoaderError(f"a training loader ({type(self.loader).__name__}) yields no batch at all")
                continue
            empty_passes = 0
            self.offset += 1
            return batch


class EmptyLoaderError(ConfigError):
    """A task's training loader cannot fill a single batch."""


class MultiTaskStream:
    """One training epoch of `{task: batch}` dicts; the task of step s is `sampler.tasks_for_step(s)`."""

    def __init__(self, loaders: dict[str, Any], sampler: TaskSampler, steps_per_epoch: int,
                 start_step: Callable[[], int], accumulate_grad_batches: int = 1):
        self.loaders = {name: _EndlessLoader(loader) for name, loader in loaders.items()}
        self.sampler = sampler
        self.steps_per_epoch = steps_per_epoch
        self.start_step = start_step
        self.accumulate = accumulate_grad_batches
        self.positions: dict[int, dict[str, dict[str, int]]] = {}  # step -> loader states before its draws

    def __len__(self) -> int:
        return self.steps_per_epoch * self.accumulate

    def __iter__(self) -> Iterator[dict[str, Any]]:
        first_step = self.start_step()
        for i in range(len(self)):
            step = first_step + i // self.accumulate
            if i % self.accumulate == 0:
                self.positions = {s: p for s, p in self.positions.items() if s >= step - 1}
                self.positions[step] = self.state()
            yield {task: self.loaders[task].next() for task in self.sampler.tasks_for_step(step)}

    def state(self) -> dict[str, dict[str, int]]:
        return {task: loader.state() for task, loader in self.loaders.items()}

    def state_before(self, step: int) -> dict[str, dict[str, int]]:
        """Loader positions before step `step` drew its batches. The trainer fetches a batch ahead, so
        when a checkpoint is taken after step - 1 the loaders may already be past that point."""
        return self.positions.get(step, self.state())

    def restore(self, state: dict[str, dict[str, int]]) -> None:
        for task, position in state.items():
            if task in self.loaders:  # a task added since the checkpoint starts from its beginning
                self.loaders[task].restore(position)


class MultiTaskDataModule(LightningDataModule):
    def __init__(self, datamodules: dict[str, LightningDataModule], sampler_factory: Callable[[dict[str, int]], TaskSampler],
                 steps_per_epoch: int | None = None):
        super().__init__()
        self.datamodules = dict(sorted(datamodules.items()))
        self.sampler_factory = sampler_factory
        self.steps_per_epoch = steps_per_epoch
        self.sampler: TaskSampler | None = None
        self.stream: MultiTaskStream | None = None
        self._restored: dict[str, dict[str, int]] | None = None  # loader positions from a checkpoint

    @property
    def task_names(self) -> list[str]:
        """Evaluation loader order: dataloader_idx i is task_names[i]."""
        return list(self.datamodules)

    def prepare_data(self) -> None:
        for dm in self.datamodules.values():
            dm.prepare_data()

    def setup(self, stage: str) -> None:
        for name, dm in self.datamodules.items():
            dm.trainer = self.trainer  # children shard by the trainer's rank and world size
            with data_errors(name):
                dm.setup(stage)
        if stage == "fit":
            with data_errors("*"):
                self.sampler = self.sampler_factory({name: num_train_samples(dm) for name, dm in self.datamodules.items()})

    def train_dataloader(self) -> MultiTaskStream:
        loaders = {}
        for name, dm in self.datamodules.items():
            with data_errors(name):
                loaders[name] = dm.train_dataloader()
            if _length(loaders[name]) == 0:
                raise EmptyLoaderError(self._too_small(name, dm, loaders[name]))
        steps = self.steps_per_epoch or sum(len(loader) for loader in loaders.values())
        trainer = self.trainer
        self.stream = MultiTaskStream(
            loaders, self.sampler, steps,
            start_step=(lambda: trainer.global_step) if trainer is not None else (lambda: 0),
            accumulate_grad_batches=trainer.accumulate_grad_batches if trainer is not None else 1,
        )
        if self._restored is not None:
            self.stream.restore(self._restored)
            self._restored = None
        return self.stream

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: where each task's loader stands after the last finished step (the same
        on every rank: all ranks train the same tasks at every step)."""
        if self.stream is None or self.trainer is None:
            return {}
        return {"loaders": self.stream.state_before(self.trainer.global_step)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict.get("loaders")

    def val_dataloader(self) -> list[Any]:
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[Any]:
        return self._eval_loaders("test")

    def _eval_loaders(self, split: str) -> list[Any]:
        loaders = []
        for name, dm in self.datamodules.items():
            with data_errors(name):
                loaders.append(getattr(dm, f"{split}_dataloader")())
        return loaders

    def _too_small(self, name: str, datamodule: LightningDataModule, loader: Any) -> str:
        _, world = rank_and_world(self)
        size = num_train_samples(datamodule)
        batch = getattr(loader, "batch_size", None) or getattr(datamodule, "batch_size", "?")
        share = f"{size // world} samples per rank ({size} over {world} ranks)" if world > 1 else f"{size} samples"
        return (f"task {name!r}: its training set holds {share}, fewer than one batch of "
                f"tasks.{name}.data.batch_size={batch} (incomplete batches are dropped): use a batch size <= "
                f"{max(size // world, 1)}")


@contextlib.contextmanager
def data_errors(task: str) -> Iterator[None]:
    """A task DataModule's `ValueError` (bad argument, missing data) as one line naming the task's data config."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as error:
        where = f"tasks.{task}.data" if task != "*" else "data"
        raise ConfigError(f"{where}: {' '.join(str(error).split())}") from None


def _length(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:  # an iterable without a length: the endless loader's own guard catches an empty one
        return None


def num_train_samples(datamodule: LightningDataModule) -> int:
    """Training-set size of a task's DataModule, for size-based task sampling."""
    declared = getattr(datamodule, "num_train_samples", None)
    if declared is not None:
        return int(declared)
    dataset = getattr(datamodule.train_dataloader(), "dataset", None)
    if isinstance(dataset, Sized):
        return len(dataset)
    raise ValueError(
        f"{type(datamodule).__name__} has no `num_train_samples` and an unsized train set; "
        "set the attribute in its setup() so size-based task sampling can weigh it"
    )


class DataStatsMonitor(Callback):
    """Each task DataModule's `data_stats(split)` (e.g. samples lost to bad data), summed over ranks.

    Training: `data/<task>/<key>` every `trainer.log_every_n_steps` steps (running totals). Validation and
    test: `<split>/<task>/<key>`, the change during that evaluation, beside its metrics (and so in
    metrics.json). DataModules without `data_stats` are left out; one whose `data_stats` takes no split
    reports training only.
    """

    def __init__(self) -> None:
        self.before: dict[str, dict[str, float]] = {}

    @staticmethod
    def stats(datamodule: LightningDataModule, split: str) -> dict[str, float]:
        stats = getattr(datamodule, "data_stats", None)
        if stats is None:
            return {}
        if not inspect.signature(stats).parameters:
            return dict(stats()) if split == "train" else {}
        return dict(stats(split))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        datamodules = getattr(trainer.datamodule, "datamodules", None)
        if not datamodules or trainer.global_step % trainer.log_every_n_steps:
            return
        for task, datamodule in datamodules.items():
            for key, value in self.stats(datamodule, "train").items():
                # Every rank reaches this step, so the summing collective cannot hang.
                pl_module.log(f"data/{task}/{key}", float(value), on_step=True, on_epoch=False, sync_dist=True,
                              reduce_fx="sum", batch_size=1)

    def _start(self, trainer: Trainer, split: str) -> None:
        datamodules = getattr(trainer.datamodule, "datamodules", None) or {}
        self.before = {task: self.stats(dm, split) for task, dm in datamodules.items()}

    def _end(self, trainer: Trainer, pl_module: LightningModule, split: str) -> None:
        if trainer.sanity_checking:
            return
        datamodules = getattr(trainer.datamodule, "datamodules", None) or {}
        for task, datamodule in datamodules.items():
            for key, value in self.stats(datamodule, split).items():
                change = float(value) - self.before.get(task, {}).get(key, 0.0)
                pl_module.log(f"{split}/{task}/{key}", change, on_step=False, on_epoch=True, sync_dist=True,
                              reduce_fx="sum", batch_size=1)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer, "val")

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._end(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer, "test")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._end(trainer, pl_module, "test")
