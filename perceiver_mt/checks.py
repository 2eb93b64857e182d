"""What a run checks before the Trainer starts, so that a mistake is one line and costs no training.

    check_config(config)          values the schema's types cannot express: sizes >= 1, heads that divide
                                  their widths, sampling weights of configured tasks, trainer values
    check_task_decoders(tasks)    each task's decoder shape (from its options)
    check_resume(path, system)    a checkpoint that exists, is a training checkpoint and fits this model

Each raises `ConfigError` naming the key, the value and what is allowed. The output folder's own rules
(never mix two runs) are in `perceiver_mt.outputs`.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path
from typing import Any

import torch

from perceiver_mt.config import RunConfig, to_dict
from perceiver_mt.errors import ConfigError
from perceiver_mt.model.perceiver import DecoderConfig, EncoderConfig

SHARDED_METADATA = "meta.pt"  # Lightning's file for the non-tensor part of a sharded checkpoint folder


def check_config(config: RunConfig) -> None:
    check_encoder(config.model)
    check_sampling(config)
    check_trainer(config.trainer)
    if config.sigterm_grace_s <= 0:
        raise ConfigError(f"sigterm_grace_s={config.sigterm_grace_s} must be > 0 seconds")


# --- model ------------------------------------------------------------------------------------------------------

def _is_count(name: str) -> bool:
    """Integer fields that count or size something: zero or negative builds a model that fails mid-run."""
    return name.startswith("num_") or name.endswith(("_channels", "_factor", "_size"))


def check_sizes(values: Any, where: str) -> None:
    """Every count/size field of a config dataclass is >= 1 (or None where None means a default)."""
    for field in dataclasses.fields(values):
        value = getattr(values, field.name)
        if _is_count(field.name) and isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise ConfigError(f"{where}.{field.name}={value} is not allowed: it must be >= 1")
        if field.name == "dropout" and not 0.0 <= value < 1.0:
            raise ConfigError(f"{where}.dropout={value} is not allowed: it must be in [0, 1)")


def check_heads(where: str, heads_key: str, heads: int, widths: dict[str, int]) -> None:
    for key, width in widths.items():
        if width % heads:
            raise ConfigError(f"{where}.{heads_key}={heads} does not divide {key}={width}: each head takes an equal "
                              f"share of the channels; choose a divisor of {width}")


def check_encoder(model: EncoderConfig) -> None:
    check_sizes(model, "model")
    # Widths as EncoderConfig documents them: qk defaults to latent_channels, v to qk.
    for kind in ("cross", "self"):
        qk_given, v_given = getattr(model, f"{kind}_attention_qk_channels"), getattr(model, f"{kind}_attention_v_channels")
        qk_key = f"model.{kind}_attention_qk_channels" if qk_given else "model.latent_channels"
        v_key = f"model.{kind}_attention_v_channels" if v_given else qk_key
        qk = qk_given or model.latent_channels
        check_heads("model", f"num_{kind}_attention_heads", getattr(model, f"num_{kind}_attention_heads"),
                    {qk_key: qk, v_key: v_given or qk})
    if model.num_cross_attends > model.num_blocks:
        raise ConfigError(f"model.num_cross_attends={model.num_cross_attends} must be <= model.num_blocks="
                          f"{model.num_blocks}: each cross-attend precedes one application of the latent block")


def check_task_decoders(tasks: dict[str, Any]) -> None:
    """Each task's decoder, as its options configure it (`Task.decoder_config()`)."""
    for name, task in tasks.items():
        decoder: DecoderConfig = task.decoder_config()
        where = f"tasks.{name}.options (decoder)"
        check_sizes(decoder, where)
        qk = decoder.qk_channels or decoder.query_channels
        check_heads(where, "num_heads", decoder.num_heads, {"qk_channels": qk, "v_channels": decoder.v_channels or qk})


# --- sampling and trainer ---------------------------------------------------------------------------------------

def check_sampling(config: RunConfig) -> None:
    tasks = sorted(config.tasks)
    weights = config.sampling.weights
    unknown = sorted(set(weights) - set(tasks))
    if unknown:  # whatever the strategy: a weight for a task that does not exist is a typo, not a choice
        raise ConfigError(f"sampling.weights.{unknown[0]} names no configured task; tasks: {', '.join(tasks)}")
    if config.sampling.strategy == "weights":
        missing = [task for task in tasks if task not in weights]
        if missing:
            raise ConfigError(f"sampling.strategy=weights needs a weight for every task: sampling.weights.{missing[0]} "
                              "is not set")
        negative = [task for task in tasks if weights[task] < 0]
        if negative or sum(weights.values()) <= 0:
            raise ConfigError(f"sampling.weights must be >= 0 with a positive sum, got {dict(weights)}")
    if config.sampling.strategy == "temperature" and config.sampling.temperature <= 0:
        raise ConfigError(f"sampling.temperature={config.sampling.temperature} must be > 0")
    if config.steps_per_epoch is not None and config.steps_per_epoch < 1:
        raise ConfigError(f"steps_per_epoch={config.steps_per_epoch} must be >= 1 "
                          "(or null: the tasks' batches added up)")


def check_trainer(trainer: dict[str, Any]) -> None:
    """The Trainer values whose mistakes Lightning reports only as a traceback (or not at all)."""
    steps = trainer.get("max_steps", -1)
    if isinstance(steps, int) and steps < -1:
        raise ConfigError(f"trainer.max_steps={steps} is not allowed: a number of steps >= 0, or -1 for no limit")
    devices = trainer.get("devices", "auto")
    allowed = "a number of devices >= 1, -1 (all), a list of device indices, or auto"
    if isinstance(devices, int) and not isinstance(devices, bool) and devices != -1 and devices < 1:
        raise ConfigError(f"trainer.devices={devices} is not allowed: {allowed}")
    for key in ("log_every_n_steps", "accumulate_grad_batches"):
        value = trainer.get(key)
        if isinstance(value, int) and value < 1:
            raise ConfigError(f"trainer.{key}={value} is not allowed: it must be >= 1")


# --- resuming ---------------------------------------------------------------------------------------------------

def read_checkpoint_metadata(path: str | Path, label: str | None = None) -> dict[str, Any]:
    """A training checkpoint's contents without reading its tensors into memory (a file: mmap; a sharded
    folder: its meta.pt). One-line `ConfigError` for a missing, empty, damaged or foreign file; `label`
    names it in that line (default: "checkpoint '<path>'")."""
    path = Path(path)
    label = label or f"checkpoint {str(path)!r}"
    if path.is_dir():
        if not (path / SHARDED_METADATA).is_file():
            raise ConfigError(f"{label} is a folder but not a sharded training checkpoint "
                              f"(it has no {SHARDED_METADATA})")
        path = path / SHARDED_METADATA
    elif not path.is_file():
        raise ConfigError(f"{label} does not exist")
    if path.stat().st_size == 0:
        raise ConfigError(f"{label} is empty (0 bytes): not a checkpoint")
    if not zipfile.is_zipfile(path):  # torch.save's format is a zip archive; a cut-off one lacks its directory
        raise ConfigError(f"{label} is damaged or not a torch.save file (not a complete zip archive)")
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as error:  # noqa: BLE001 - whatever torch says, the file cannot be used
        detail = " ".join(str(error).split()) or "no details"
        raise ConfigError(f"{label} cannot be read: {type(error).__name__}: {detail[:300]}") from None
    if not isinstance(checkpoint, dict) or "hyper_parameters" not in checkpoint or "state_dict" not in checkpoint \
            and path.name != SHARDED_METADATA:
        held = f"keys {', '.join(sorted(map(str, checkpoint))[:5])}" if isinstance(checkpoint, dict) else \
            f"a {type(checkpoint).__name__}"
        raise ConfigError(f"{label} is not a perceiver-mt training checkpoint (it holds {held}; expected a file "
                          "that training writes to <output_dir>/checkpoints/)")
    return checkpoint


def config_differences(saved: Any, current: Any, prefix: str) -> list[str]:
    """`key=saved there, current here` for every dotted key whose value differs between two config dicts."""
    if isinstance(saved, dict) and isinstance(current, dict):
        return [d for key in sorted(set(saved) | set(current))
                for d in config_differences(saved.get(key), current.get(key), f"{prefix}.{key}")]
    return [] if saved == current else [f"{prefix}={saved!r} there, {current!r} here"]


def model_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The settings that shape the network (model.*, each task's plugin and options) that differ."""
    differences = config_differences(saved.get("model", {}), current["model"], "model")
    saved_tasks, current_tasks = saved.get("tasks", {}), current["tasks"]
    for task in sorted(set(saved_tasks) | set(current_tasks)):
        a, b = saved_tasks.get(task) or {}, current_tasks.get(task) or {}
        differences += config_differences({"plugin": a.get("plugin"), "options": a.get("options", {})},
                                          {"plugin": b.get("plugin"), "options": b.get("options", {})}, f"tasks.{task}")
    return differences


def stored_shapes(path: Path, checkpoint: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Parameter shapes in a checkpoint file's state_dict, or in a sharded folder's index (no tensor is read)."""
    if "state_dict" in checkpoint:
        return {key: tuple(value.shape) for key, value in checkpoint["state_dict"].items()}
    from torch.distributed.checkpoint import FileSystemReader

    index = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    return {key.removeprefix("state_dict."): tuple(entry.size) for key, entry in index.items()
            if key.startswith("state_dict.") and hasattr(entry, "size")}


def check_resume(path: str | None, config: RunConfig, shapes: dict[str, tuple[int, ...]]) -> None:
    """The checkpoint to resume from exists, is a training checkpoint, and holds the network this config builds.

    `shapes`: the freshly built system's state_dict shapes. A mismatch names the first differing tensor
    and the settings that differ from the run that wrote the checkpoint.
    """
    if path is None:
        return
    checkpoint = read_checkpoint_metadata(path, f"ckpt_path={path!r}")
    saved = stored_shapes(Path(path), checkpoint)
    differing = [key for key in shapes if key in saved and tuple(saved[key]) != tuple(shapes[key])]
    unmatched = sorted(set(shapes) ^ set(saved))
    if not differing and not unmatched:
        return
    first = (f"{differing[0]} is {saved[differing[0]]} there, {tuple(shapes[differing[0]])} here" if differing
             else f"{unmatched[0]} is in {'this model only' if unmatched[0] in shapes else 'the checkpoint only'}")
    settings = model_differences(checkpoint["hyper_parameters"].get("config", {}), to_dict(config))
    because = f"; settings that differ: {'; '.join(settings[:3])}" if settings else ""
    raise ConfigError(f"ckpt_path={str(path)!r} holds another network than this config builds ({first}{because}): "
                      "resume with the settings it was trained with, or start a new run in another output_dir")
