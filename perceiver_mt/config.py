"""Run configuration: typed dataclass schema, YAML files and `dotted.key=value` overrides (OmegaConf).

Every mistake becomes one `ConfigError` line naming the key and what is allowed, e.g.
`unknown config key 'model.num_latent' (valid: num_latents, latent_channels, ...)`.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from perceiver_mt.errors import ConfigError
from perceiver_mt.model.perceiver import EncoderConfig
from perceiver_mt.parallelize import ParallelConfig
from perceiver_mt.sampling import STRATEGIES, SamplingConfig
from perceiver_mt.speed.seam import SpeedConfig
from perceiver_mt.speed.seam import check_config as check_speed_config


DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


@dataclass
class OptimConfig:
    lr: float = 1e-3  # peak learning rate, reached after warmup
    weight_decay: float = 0.01  # AdamW decoupled decay, applied to matrices only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 100  # linear warmup from 0; protects the freshly initialised attention
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the last step


@dataclass
class TaskConfig:
    plugin: str = "???"  # registered task plugin name (entry point in `perceiver_mt.tasks`)
    loss_weight: float = 1.0  # multiplies this task's loss in the summed objective
    options: dict[str, Any] = field(default_factory=dict)  # the plugin's own typed options
    data: dict[str, Any] = field(default_factory=dict)  # {name: <registered DataModule>, **its arguments}


@dataclass
class LoggerConfig:
    kind: str = "wandb"  # wandb | csv | none; wandb falls back to csv (one-line message) if it cannot start
    mode: str | None = None  # online | offline | disabled; None = WANDB_MODE, else online iff credentials exist
    project: str = "perceiver-mt"
    entity: str | None = None
    group: str | None = None  # e.g. a sweep: W&B shows grouped runs together
    tags: list[str] = field(default_factory=list)
    notes: str | None = None
    name: str | None = None  # display name; None = W&B's generated one
    log_model: bool = False  # upload checkpoints as W&B artifacts (online runs only)
    conflict_every_n_steps: int = 50  # task-gradient cosine matrix on the shared encoder; 0 = off (costs 1 fwd/bwd per task)
    media_every_n_steps: int = 0  # task media at validation once this many steps passed since the last; -1 = never
    init_timeout_s: float = 15.0  # online W&B that cannot reach its server gives up after this long (then CSV)


@dataclass
class RunConfig:
    seed: int = 0
    output_dir: str = "runs/default"  # metrics.json, checkpoints and logs go here
    model: EncoderConfig = field(default_factory=EncoderConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)  # faster ways to compute the same model (perceiver_mt.speed)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    steps_per_epoch: int | None = None  # None = the tasks' train batches added up
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)  # keyword arguments of lightning.Trainer
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # DDP/FSDP options (perceiver_mt.parallel)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    ckpt_path: str | None = None  # resume from this checkpoint ("last" = output_dir/checkpoints/last.ckpt)
    overwrite: bool = False  # a new run in an output_dir that holds an earlier one: false = refuse, true = replace it
    sigterm_grace_s: float = 30.0  # after SIGTERM the run stops at the next step; if stuck, it exits after this long
    # Start from another run's weights (perceiver_mt/init_from.py): the shared encoder and every task part whose
    # name and shape match. Ignored when resuming (ckpt_path), which restores everything.
    init_from: str | None = None
    init_map: dict[str, str] = field(default_factory=dict)  # {task here: task in init_from} for renamed tasks
    test: bool = True  # evaluate the test split of every task after fitting


# Keys that moved, old -> new. Saved configs (checkpoints' hyperparameters) are upgraded; a config file or
# override that names an old key fails in one line saying where it went.
MOVED_KEYS = {
    "model.input_chunk_size": "speed.input_chunk_size",
    "model.attention_kernel": "speed.attention_kernel",
    "model.activation_checkpointing": "parallel.activation_checkpointing",
}


def _explain(error: OmegaConfBaseException, where: str = "") -> ConfigError:
    key = f"{where}{getattr(error, 'full_key', '') or ''}"
    if isinstance(error, ConfigKeyError):
        parent_type = getattr(error, "object_type", None)
        valid = ", ".join(f.name for f in dataclasses.fields(parent_type)) if dataclasses.is_dataclass(parent_type) else ""
        return ConfigError(f"unknown config key '{key}'" + (f" (valid: {valid})" if valid else ""))
    if isinstance(error, ValidationError):
        return ConfigError(f"bad value for config key '{key}': {str(error).splitlines()[0]}")
    return ConfigError(f"config error at '{key}': {str(error).splitlines()[0]}")


def load_yaml(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """A YAML config file. A top-level `base: other.yaml` (relative to the file) is loaded first and then
    overridden, so a preset (e.g. configs/fsdp.yaml) holds only what it changes."""
    try:
        values = OmegaConf.load(path)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}: {problem}") from None
    except OSError as error:  # OmegaConf's word for a file holding a single value (a number, a date)
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys (seed:, model:, tasks:, ...), "
                          f"not a single value ({error})") from None
    if not isinstance(values, DictConfig):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys (seed:, model:, tasks:, ...), "
                          f"not a {type(values).__name__.removesuffix('Config').lower()}")
    base = values.pop("base", None)
    if base is None:
        return values
    base_path = (path.parent / str(base)).resolve()
    if not base_path.is_file() or base_path in seen:
        problem = "does not exist" if not base_path.is_file() else "includes itself"
        raise ConfigError(f"base: {base!r} in {str(path)!r} {problem}")
    return typing.cast(DictConfig, OmegaConf.merge(load_yaml(base_path, (*seen, path.resolve())), values))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Schema <- YAML file <- `key=value` overrides, validated; returns a typed RunConfig."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        values = load_yaml(path)
        _refuse_moved_keys(values, f"in {str(path)!r}")
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), values)
        for override in overrides or []:
            if "=" not in override:
                raise ConfigError(f"override {override!r} must look like dotted.key=value")
            override_values = OmegaConf.from_dotlist([override])
            _refuse_moved_keys(override_values, "in an override")
            merged = OmegaConf.merge(merged, override_values)
        OmegaConf.resolve(merged)
        try:
            check_speed_config(typing.cast(SpeedConfig, merged.speed))
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if merged.sampling.strategy not in STRATEGIES:
            raise ConfigError(f"sampling.strategy={merged.sampling.strategy!r} is unknown; choose one of {', '.join(STRATEGIES)}")
        for name, task in merged.tasks.items():
            if OmegaConf.is_missing(task, "plugin"):
                raise ConfigError(f"tasks.{name}.plugin is not set: name a registered task plugin")
        return typing.cast(RunConfig, OmegaConf.to_object(merged))
    except OmegaConfBaseException as error:
        raise _explain(error) from None


def _refuse_moved_keys(values: DictConfig, where: str) -> None:
    for old, new in MOVED_KEYS.items():
        absent = object()
        if OmegaConf.select(values, old, default=absent, throw_on_missing=False) is not absent:
            raise ConfigError(f"config key '{old}' ({where}) moved to '{new}'")


def validate_options(options_class: type, values: dict[str, Any], where: str) -> Any:
    """Values checked against a dataclass schema (a plugin's options); returns the dataclass instance.

    The schema types each value; the dataclass's own `__post_init__` may refuse a value with `ValueError`
    (e.g. "seq_len=0 must be >= 1"), which becomes one line naming `where`.
    """
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(options_class), values))
    except OmegaConfBaseException as error:
        raise _explain(error, f"{where}.") from None
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None


def validate_kwargs(target: Any, values: dict[str, Any], where: str) -> dict[str, Any]:
    """Keyword arguments checked against `target`'s signature, each typed where OmegaConf can express its
    annotation (e.g. `trainer.max_steps=abc` fails here, not deep inside the Trainer)."""
    parameters = {n: p for n, p in inspect.signature(target).parameters.items()
                  if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(values) - set(parameters))
    if unknown:
        raise ConfigError(f"unknown config key '{where}.{unknown[0]}' (valid: {', '.join(parameters)})")
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except (TypeError, NameError):
        hints = {}
    typed = {}
    for name, value in values.items():
        try:  # one field at a time: one inexpressible annotation must not leave the others unchecked
            schema = OmegaConf.structured(dataclasses.make_dataclass("Argument", [(name, hints.get(name, Any))]))
        except (OmegaConfBaseException, TypeError, ValueError):
            typed[name] = value  # an annotation OmegaConf cannot express: the name was checked, the value passes
            continue
        try:
            typed[name] = OmegaConf.to_container(OmegaConf.merge(schema, {name: value}), resolve=True)[name]
        except ValidationError as error:
            raise _explain(error, f"{where}.") from None
    return typed


def to_dict(config: RunConfig) -> dict[str, Any]:
    return typing.cast(dict, OmegaConf.to_container(OmegaConf.structured(config), resolve=True))


def from_dict(values: dict[str, Any]) -> RunConfig:
    """A RunConfig saved with `to_dict` (e.g. a checkpoint's hyperparameters), keys that moved since upgraded."""
    values = {section: dict(v) if isinstance(v, dict) else v for section, v in values.items()}
    for old, new in MOVED_KEYS.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        if old_key in values.get(old_section, {}):
            value = values[old_section].pop(old_key)
            values.setdefault(new_section, {})
            values[new_section][new_key] = values[new_section].get(new_key) or value  # a switch stays on if either was
    return typing.cast(RunConfig, OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), values)))
