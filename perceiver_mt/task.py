"""The task plugin interface: everything that makes one problem different from another.

A plugin subclasses `Task` in one file and registers it under the `perceiver_mt.tasks` entry-point
group. The core builds a `TaskModel` from it (adapter -> shared encoder -> queries x decoder -> head)
and calls `loss` and `update_metrics` on every batch. A batch is a dict with at least:

    "inputs": whatever the adapter reads (a tensor, or a dict of tensors for several modalities)
    "target": whatever `loss` compares against
    "index":  (B,) int64 sample ids, unique within a split (used to check sharding)

and any extra keys the task wants (padding masks, loss masks, query subsets).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torchmetrics import MetricCollection

from perceiver_mt.model.init import fan_in_init_
from perceiver_mt.model.perceiver import DecoderConfig, EncoderConfig

Batch = dict[str, Any]


class TaskInputError(ValueError):
    """A batch a task cannot take, in one line: the task, what it got, what it expects."""


@dataclass
class NoOptions:
    """Options of a task that has none."""


class Task(abc.ABC):
    """Base class of task plugins. Subclasses set the class attributes and fill in the hooks."""

    options_class: ClassVar[type] = NoOptions  # a dataclass: the task's typed, validated options
    default_data: ClassVar[str] = ""  # registered DataModule name that feeds this task unless configured

    def __init__(self, name: str, options: Any, encoder: EncoderConfig):
        self.name = name  # the task *instance* name from the config (two instances may share a plugin)
        self.options = options
        self.encoder = encoder
        # The run's optimizer step (all tasks' steps), set by the system before each training loss, so that a
        # task may schedule its loss; it comes back with the trainer's step on resume. 0 before training.
        self.step = 0

    # --- model parts -------------------------------------------------------------------------------
    @abc.abstractmethod
    def build_adapter(self) -> nn.Module:
        """Module: batch -> tokens (B, M, encoder.input_channels), or (tokens, pad_mask (B, M) True = pad).

        Tokens of a grid that are [content | Fourier features of the position] are best made by a
        `ConcatFourierPositions` as the adapter's last step: the speed layer then keeps the position features per
        axis (`speed.grid_tokens`), and inference never repeats them for every point.
        """

    @abc.abstractmethod
    def build_queries(self) -> nn.Module:
        """Module: batch -> output queries (B, O, decoder_config().query_channels)."""

    def decoder_config(self) -> DecoderConfig:
        return DecoderConfig()

    @abc.abstractmethod
    def build_head(self) -> nn.Module:
        """Module: decoder output (B, O, query_channels) -> the task's outputs (e.g. logits).

        With `speed.query_chunk_size` set and more queries than that, the head runs on each chunk of queries
        and the results are concatenated along dim 1, so it must then map each query on its own (per pixel,
        per token).
        """

    def init_weights(self, part: nn.Module) -> None:
        """Initialise a freshly built adapter, query module or head. Default: fan-in init of its Linears."""
        fan_in_init_(part)

    # --- objective ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Scalar training loss of one batch."""

    def loss_count(self, batch: Batch) -> int | torch.Tensor:
        """How many terms `loss` averages over: samples by default; a token-mean loss returns its token count.

        Data-parallel ranks and epoch means are weighted by it, so N ranks train like one process.
        """
        return len(batch["index"])

    @abc.abstractmethod
    def build_metrics(self) -> MetricCollection:
        """Fresh torchmetrics; the system makes one copy per split and syncs them across ranks."""

    def update_metrics(self, metrics: MetricCollection, outputs: torch.Tensor, batch: Batch) -> None:
        metrics.update(outputs.detach(), batch["target"])

    # --- data ----------------------------------------------------------------------------------------
    # The DataModule registered as `default_data` (or named by `tasks.<name>.data.name`) is built by
    # `perceiver_mt.plugins.build_task_datamodule` with `tasks.<name>.data.*` as keyword arguments, on top
    # of `datamodule_defaults()`. Two more are injected when its constructor has a parameter of that name:
    #     seed: the run's seed (unless the config sets one), for shuffling and augmentation
    #     task: this Task instance, e.g. to decode stored records with the task's codec
    # Its batches are dicts as described at the top of this file; `perceiver_mt.data.InMemoryDataModule`
    # does the rank sharding for data that fits in memory. A constructor that raises ValueError for a bad
    # argument is shown as one line naming `tasks.<name>.data`.
    def datamodule_defaults(self) -> dict[str, Any]:
        """DataModule arguments implied by the task's options (e.g. sequence length); config overrides them."""
        return {}

    # --- shards (WebDataset) -------------------------------------------------------------------------
    # Fields every stored sample must have -> the numpy dtype to store it as (None: as it is). A smaller
    # dtype shrinks shards; such fields read back as int64 / float32 / bool. Fields not named are stored
    # as they are too, so a task that declares nothing still gets shards. The codec that reads this is
    # `perceiver_mt.shards.codec`; a task whose samples are not tensors defines its own instead:
    #     def encode_sample(self, sample: Batch) -> dict[str, bytes]      # {"<field>.<ext>": bytes}
    #     def decode_sample(self, files: dict[str, Any]) -> Batch         # raise ValueError if untrustworthy
    shard_fields: ClassVar[dict[str, str | None]] = {"inputs": None, "target": None, "index": "int64"}

    # --- checks and inference ----------------------------------------------------------------------
    def check_batch(self, batch: Batch) -> None:
        """Raise TaskInputError (or ValueError; one line naming the task, what it got, what it expects) for
        input the task cannot take. The system calls it before every forward pass."""

    def make_batch(self, raw: Any) -> Batch:
        """Raw user input (as documented by the task)  ->  a batch for inference. Default: the tensor as is."""
        return {"inputs": torch.as_tensor(raw)}

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        """Turn raw outputs into predictions for `perceiver_mt.inference`. Default: argmax over classes."""
        return outputs.argmax(dim=-1)

    # --- media -------------------------------------------------------------------------------------
    def log_media(self, outputs: torch.Tensor, batch: Batch) -> dict[str, Any]:
        """Pictures/tables/audio of one validation batch for the run's dashboard: {name: media}, media
        from `perceiver_mt.tracking.media` (Image, Images, Table, Heatmap, Audio). Default: none."""
        return {}


def check_task_batch(task: Task, batch: Batch) -> None:
    """The task's own `check_batch`; a plain ValueError from it becomes a TaskInputError (one line at the
    command line)."""
    try:
        task.check_batch(batch)
    except TaskInputError:
        raise
    except ValueError as error:
        raise TaskInputError(str(error)) from None
