"""One training job from a RunConfig: build system, data and Trainer; fit; evaluate; write the results."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from lightning.pytorch.utilities import rank_zero_info

from perceiver_mt.checks import check_config, check_resume, check_task_decoders, check_trainer
from perceiver_mt.config import RunConfig, validate_kwargs
from perceiver_mt.data import DataStatsMonitor, MultiTaskDataModule
from perceiver_mt.errors import ConfigError
from perceiver_mt.init_from import initialise_from
from perceiver_mt.outputs import AtomicCheckpointIO, prepare_output_dir, write_atomically
from perceiver_mt.parallel import CollectiveTimeout, build_strategy, release_process_group
from perceiver_mt.plugins import build_task_datamodule, build_tasks
from perceiver_mt.sampling import TaskSampler
from perceiver_mt.shutdown import SigtermDeadline
from perceiver_mt.system import MultiTaskSystem
from perceiver_mt.tracking import loggers as tracking_loggers
from perceiver_mt.tracking.callbacks import build_callbacks
from perceiver_mt.tracking.loggers import launch_rank


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
    check_trainer(config.trainer)
    kwargs = validate_kwargs(Trainer, dict(config.trainer), "trainer")
    kwargs["strategy"] = build_strategy(kwargs.get("strategy", "auto"), config.parallel, kwargs.get("accelerator", "auto"))
    # Versioned names (last-v1.ckpt) would save one file and print another: a run owns its folder (outputs.py).
    checkpoints = ModelCheckpoint(dirpath=Path(config.output_dir) / "checkpoints", save_last=True, save_top_k=0,
                                  every_n_train_steps=config.parallel.checkpoint_every_n_steps or None,
                                  enable_version_counter=False)
    kwargs.setdefault("default_root_dir", config.output_dir)
    kwargs["callbacks"] = [checkpoints, DataStatsMonitor(), *build_callbacks(config), *kwargs.get("callbacks", []),
                           CollectiveTimeout(config.parallel.timeout_s), SigtermDeadline(config.sigterm_grace_s),
                           *extra.pop("callbacks", [])]
    kwargs["plugins"] = [*kwargs.get("plugins", []), AtomicCheckpointIO()]
    kwargs.setdefault("use_distributed_sampler", False)  # task DataModules shard by rank themselves
    logger_given = "logger" in kwargs or "logger" in extra
    try:
        trainer = Trainer(**{**kwargs, "logger": kwargs.get("logger", False), **extra})
    except (MisconfigurationException, ValueError, TypeError, ImportError) as error:  # Lightning's own checks
        raise ConfigError(f"trainer: {' '.join(str(error).split())[:400]}") from None
    if not logger_given:  # started once the Trainer's checks passed: a refused run leaves no W&B run behind
        trainer.logger = build_logger(config) or None
    return trainer


def resolve_checkpoint(config: RunConfig) -> str | None:
    """The checkpoint to resume from: `ckpt_path` as given; for "last", <output_dir>/checkpoints/last.ckpt (a
    file, or a folder when sharded) or None when the run has none yet (so `ckpt_path=last` is always safe)."""
    if config.ckpt_path != "last":
        return config.ckpt_path
    last = Path(config.output_dir) / "checkpoints" / "last.ckpt"
    return str(last) if last.exists() else None


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

    Everything that can be checked before the Trainer starts is, and fails as one `ConfigError` line.
    `callbacks` join the Trainer's own (e.g. to record what each rank did).
    """
    check_config(config)
    first_process = launch_rank() == 0  # the process that will be global rank zero (others start later)
    if first_process:
        prepare_output_dir(config.output_dir, config.ckpt_path, config.overwrite)
    L.seed_everything(config.seed, workers=True, verbose=False)
    system = build_system(config)
    checkpoint = resolve_checkpoint(config)
    check_resume(checkpoint, config, {k: tuple(v.shape) for k, v in system.state_dict().items()})
    if config.ckpt_path == "last" and checkpoint is None and first_process:
        print(f"ckpt_path=last: no checkpoint in {Path(config.output_dir) / 'checkpoints'} yet; starting at step 0",
              file=sys.stderr)
    if config.init_from and checkpoint is None:  # resuming restores everything instead
        rank_zero_info(initialise_from(system.model, config.init_from, config.init_map).line())
    datamodule = build_datamodule(config, system)
    trainer = build_trainer(config, callbacks=list(callbacks or []))
    try:
        trainer.fit(system, datamodule=datamodule, ckpt_path=checkpoint)
        results = trainer.validate(system, datamodule=datamodule, verbose=False)
        if config.test:
            results += trainer.test(system, datamodule=datamodule, verbose=False)
    except SIGTERMException:
        raise Stopped(f"stopped by SIGTERM at step {trainer.global_step}; {describe_checkpoint(trainer)}") from None
    finally:
        for callback in trainer.callbacks:
            if isinstance(callback, SigtermDeadline):
                callback.cancel()
    metrics = collect_metrics(results)
    if trainer.is_global_zero:
        output = Path(config.output_dir)
        table = json.dumps(metrics, indent=2, sort_keys=True).encode()
        write_atomically(output / "metrics.json", lambda out: out.write(table))
        print(format_table(metrics))
        print(f"metrics: {output / 'metrics.json'}  {describe_checkpoint(trainer)}")
    tracking_loggers.finish(trainer)
    release_process_group()
    return metrics


class Stopped(Exception):
    """The run was stopped from outside (SIGTERM) before it finished; the message says where it stood."""


def build_system(config: RunConfig) -> MultiTaskSystem:
    """The system of this config, after every check that names a config key (a plugin's own checks included)."""
    check_task_decoders(build_tasks(config))
    try:
        return MultiTaskSystem.from_config(config)
    except ConfigError:
        raise
    except ValueError as error:  # a layer's own check that the ones above do not know about yet
        raise ConfigError(f"the network cannot be built from model.* and tasks.*.options: {error}") from None


def describe_checkpoint(trainer: Trainer) -> str:
    """What was really written: the checkpoint's path, or that there is none."""
    path = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
    if path and Path(path).exists():
        return f"checkpoint: {path}"
    return "checkpoint: none written (no training step was taken)" if trainer.global_step == 0 else \
        "checkpoint: none written"
