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

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from perceiver_mt.model.kernels import KERNELS
from perceiver_mt.model.perceiver import EncoderConfig
from perceiver_mt.parallel import ParallelConfig
from perceiver_mt.sampling import STRATEGIES, SamplingConfig

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


class ConfigError(ValueError):
    """A configuration mistake, explained in one line."""


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


@dataclass
class RunConfig:
    seed: int = 0
    output_dir: str = "runs/default"  # metrics.json, checkpoints and logs go here
    model: EncoderConfig = field(default_factory=EncoderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    steps_per_epoch: int | None = None  # None = the tasks' train batches added up
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)  # keyword arguments of lightning.Trainer
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # DDP/FSDP options (perceiver_mt.parallel)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    ckpt_path: str | None = None  # resume from this checkpoint ("last" = output_dir/checkpoints/last.ckpt)
    # Start from another run's weights (perceiver_mt/init_from.py): the shared encoder and every task part whose
    # name and shape match. Ignored when resuming (ckpt_path), which restores everything.
    init_from: str | None = None
    init_map: dict[str, str] = field(default_factory=dict)  # {task here: task in init_from} for renamed tasks
    test: bool = True  # evaluate the test split of every task after fitting


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
    values = OmegaConf.load(path)
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
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), load_yaml(path))
        for override in overrides or []:
            if "=" not in override:
                raise ConfigError(f"override {override!r} must look like dotted.key=value")
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([override]))
        OmegaConf.resolve(merged)
        if merged.model.attention_kernel not in KERNELS:
            raise ConfigError(f"model.attention_kernel={merged.model.attention_kernel!r} is unknown; "
                              f"choose one of {', '.join(KERNELS)}")
        if merged.sampling.strategy not in STRATEGIES:
            raise ConfigError(f"sampling.strategy={merged.sampling.strategy!r} is unknown; choose one of {', '.join(STRATEGIES)}")
        for name, task in merged.tasks.items():
            if OmegaConf.is_missing(task, "plugin"):
                raise ConfigError(f"tasks.{name}.plugin is not set: name a registered task plugin")
        return typing.cast(RunConfig, OmegaConf.to_object(merged))
    except OmegaConfBaseException as error:
        raise _explain(error) from None


def validate_options(options_class: type, values: dict[str, Any], where: str) -> Any:
    """Values checked against a dataclass schema (a plugin's options); returns the dataclass instance."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(options_class), values))
    except OmegaConfBaseException as error:
        raise _explain(error, f"{where}.") from None


def validate_kwargs(target: Any, values: dict[str, Any], where: str) -> dict[str, Any]:
    """Keyword arguments checked against `target`'s signature, typed where its annotations allow."""
    parameters = {n: p for n, p in inspect.signature(target).parameters.items()
                  if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(values) - set(parameters))
    if unknown:
        raise ConfigError(f"unknown config key '{where}.{unknown[0]}' (valid: {', '.join(parameters)})")
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
        schema = dataclasses.make_dataclass(
            "Arguments", [(n, hints.get(n, Any)) for n in values]
        )
        typed = OmegaConf.merge(OmegaConf.structured(schema), values)
    except OmegaConfBaseException as error:
        if isinstance(error, ValidationError):
            raise _explain(error, f"{where}.") from None
        return dict(values)  # annotations OmegaConf cannot express: names were checked, pass values as given
    except (TypeError, NameError):
        return dict(values)
    return typing.cast(dict, OmegaConf.to_container(typed, resolve=True))


def to_dict(config: RunConfig) -> dict[str, Any]:
    return typing.cast(dict, OmegaConf.to_container(OmegaConf.structured(config), resolve=True))


def from_dict(values: dict[str, Any]) -> RunConfig:
    return typing.cast(RunConfig, OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), values)))
