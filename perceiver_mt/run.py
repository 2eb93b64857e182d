"""One training job from a RunConfig: build system, data and Trainer; fit; evaluate; write the results."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from perceiver_mt.config import ConfigError, RunConfig, validate_kwargs
from perceiver_mt.data import DataStatsMonitor, MultiTaskDataModule
from perceiver_mt.init_from import initialise_from
from perceiver_mt.parallel import CollectiveTimeout, build_strategy, release_process_group
from perceiver_mt.registry import load_datamodule
from perceiver_mt.sampling import TaskSampler
from perceiver_mt.system import MultiTaskSystem
from perceiver_mt.task import Task
from perceiver_mt.tracking import loggers as tracking_loggers
from perceiver_mt.tracking.callbacks import build_callbacks


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
    return datamodule_class(**kwargs)


def build_datamodule(config: RunConfig, system: MultiTaskSystem) -> MultiTaskDataModule:
    datamodules = {
        name: build_task_datamodule(name, task, config.tasks[name].data, config.seed)
        for name, task in system.task_plugins.items()
    }
    return MultiTaskDataModule(
        datamodules, lambda sizes: TaskSampler(config.sampling, sizes, config.seed), config.steps_per_epoch
    )


def build_logger(config: RunConfig) -> Any:
    """W&B (online/offline; CSV if it cannot start), CSV or none: see perceiver_mt.tracking.loggers."""
    return tracking_loggers.build_logger(config, resolve_checkpoint(config))


def build_trainer(config: RunConfig, **extra: Any) -> Trainer:
    kwargs = validate_kwargs(Trainer, dict(config.trainer), "trainer")
    kwargs["strategy"] = build_strategy(kwargs.get("strategy", "auto"), config.parallel, kwargs.get("accelerator", "auto"))
    checkpoints = ModelCheckpoint(dirpath=Path(config.output_dir) / "checkpoints", save_last=True, save_top_k=0,
                                  every_n_train_steps=config.parallel.checkpoint_every_n_steps or None)
    kwargs.setdefault("default_root_dir", config.output_dir)
    kwargs["callbacks"] = [checkpoints, DataStatsMonitor(), *build_callbacks(config), *kwargs.get("callbacks", []),
                           CollectiveTimeout(config.parallel.timeout_s), *extra.pop("callbacks", [])]
    kwargs.setdefault("logger", build_logger(config))
    kwargs.setdefault("use_distributed_sampler", False)  # task DataModules shard by rank themselves
    return Trainer(**{**kwargs, **extra})


def resolve_checkpoint(config: RunConfig) -> str | None:
    if config.ckpt_path != "last":
        return config.ckpt_path
    last = Path(config.output_dir) / "checkpoints" / "last.ckpt"
    return str(last) if last.exists() else None  # a file, or a folder when sharded; nothing yet: start fresh, so `ckpt_path=last` is always safe


def collect_metrics(results: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Lightning's flat `split/task/metric` results  ->  {task: {"split/metric": value}}."""
    table: dict[str, dict[str, float]] = {}
    for result in results:
        for key, value in result.items():
            split, task, metric = key.split("/", 2)
            table.setdefault(task, {})[f"{split}/{metric}"] = float(value)
    return table


def format_table(metrics: dict[str, dict[str, float]]) -> str:
    columns = sorted({column for row in metrics.values() for column in row})
    lines = [" | ".join(["task".ljust(14)] + [c.rjust(18) for c in columns])]
    for task, row in sorted(metrics.items()):
        cells = [f"{row[c]:.4f}" if c in row and not math.isnan(row[c]) else "-" for c in columns]
        lines.append(" | ".join([task.ljust(14)] + [c.rjust(18) for c in cells]))
    return "\n".join(lines)


def train(config: RunConfig, callbacks: list[Any] | None = None) -> dict[str, dict[str, float]]:
    """Fit, then validate and test every task; writes `<output_dir>/metrics.json`, returns the same table.

    `callbacks` join the Trainer's own (e.g. to record what each rank did).
    """
    L.seed_everything(config.seed, workers=True, verbose=False)
    system = MultiTaskSystem.from_config(config)
    resume = resolve_checkpoint(config)
    if config.init_from and resume is None:
        report = initialise_from(system.model, config.init_from, config.init_map)
        rank_zero_info(report.line())
    datamodule = build_datamodule(config, system)
    trainer = build_trainer(config, callbacks=list(callbacks or []))
    trainer.fit(system, datamodule=datamodule, ckpt_path=resume)
    results = trainer.validate(system, datamodule=datamodule, verbose=False)
    if config.test:
        results += trainer.test(system, datamodule=datamodule, verbose=False)
    metrics = collect_metrics(results)
    if trainer.is_global_zero:
        output = Path(config.output_dir)
        output.mkdir(parents=True, exist_ok=True)
        (output / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        print(format_table(metrics))
        print(f"metrics: {output / 'metrics.json'}  checkpoint: {output / 'checkpoints' / 'last.ckpt'}")
    tracking_loggers.finish(trainer)
    release_process_group()
    return metrics
