"""Task plugins and their DataModules built from a run config: the one place where both are made.

Training (`system.py`, `run.py`) and the shard writer (`shards/writer.py`) build them here, so a task
instance and its data are the same object whichever command asked for them.

The DataModule contract: the class registered under `tasks.<name>.data.name` (default: the plugin's
`default_data`) is called with `tasks.<name>.data.*` on top of `Task.datamodule_defaults()`, checked
against its signature. Two arguments are injected when its constructor takes a parameter of that name:
`seed` (the run's seed, unless the config sets one) and `task` (the `Task` instance, e.g. to decode
stored records with the task's codec). A constructor that raises `ValueError` for a bad argument gets
its message shown as one line naming `tasks.<name>.data`.
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any, Callable

from perceiver_mt.config import RunConfig, validate_kwargs, validate_options
from perceiver_mt.errors import ConfigError
from perceiver_mt.model.multitask import MultiTaskPerceiver
from perceiver_mt.registry import load_datamodule, load_task
from perceiver_mt.speed import apply_speedups
from perceiver_mt.task import Task
from perceiver_mt.task_checks import install_width_checks

if TYPE_CHECKING:
    from lightning.pytorch import LightningDataModule


def build_task(config: RunConfig, name: str) -> Task:
    """Task instance `name` of the config: its plugin, with options validated against the plugin's schema."""
    task_config = config.tasks[name]
    plugin = load_task(task_config.plugin)
    options = validate_options(plugin.options_class, task_config.options, f"tasks.{name}.options")
    try:
        return plugin(name, options, config.model)
    except ValueError as error:
        raise ConfigError(f"tasks.{name}: {error}") from None


def build_tasks(config: RunConfig) -> dict[str, Task]:
    """Every task instance of the config, by instance name, in sorted order."""
    return {name: build_task(config, name) for name in sorted(config.tasks)}


def build_network(config: RunConfig, tasks: dict[str, Task],
                  log: Callable[[str], None] = logging.getLogger(__name__).info) -> MultiTaskPerceiver:
    """The network of the config, for training and inference alike: the reference model with the configured
    speedups (same parameters), and checks that name the task whose adapter or queries have the wrong width."""
    network = apply_speedups(MultiTaskPerceiver(config.model, tasks), config.speed, log=log)
    install_width_checks(network.tasks, config.model.input_channels)
    return network


def build_task_datamodule(name: str, task: Task, data: dict[str, Any], seed: int) -> LightningDataModule:
    """The DataModule feeding task instance `name`: the plugin's default unless `data.name` says otherwise."""
    data = dict(data)
    datamodule_class = load_datamodule(data.pop("name", None) or task.default_data)
    kwargs = {**task.datamodule_defaults(), **data}
    accepted = inspect.signature(datamodule_class).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in accepted or k in data}  # defaults only where they apply
    if "seed" in accepted and "seed" not in kwargs:
        kwargs["seed"] = seed
    kwargs = validate_kwargs(datamodule_class, kwargs, f"tasks.{name}.data")
    if "task" in accepted:  # DataModules of stored records (shards) decode them with the task's own codec
        kwargs["task"] = task
    try:
        return datamodule_class(**kwargs)
    except ValueError as error:
        raise ConfigError(f"tasks.{name}.data: {error}") from None
