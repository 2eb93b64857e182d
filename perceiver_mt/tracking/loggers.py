"""Which logger a job writes to, and starting it: W&B by default, online or offline, CSV as the fallback.

One W&B run per job: only the process that will be global rank zero starts it (eagerly, so a failure
is caught here and turned into the CSV logger); Lightning's `WandbLogger` never starts one elsewhere.
A resumed job reads the run id stored in its checkpoint and continues the same W&B run.
"""

from __future__ import annotations

import json
import netrc
import os
import secrets
import string
import sys
import threading
import time
import urllib.error
import urllib.request
from argparse import Namespace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from perceiver_mt.config import ConfigError, RunConfig, to_dict

KINDS = ("wandb", "csv", "none")
MODES = ("online", "offline", "disabled")
MODE_ALIASES = {"dryrun": "offline", "run": "online"}  # older WANDB_MODE spellings
RUN_ID_KEY = "wandb_run_id"  # where checkpoints keep the W&B run id
SHARDED_METADATA = "meta.pt"  # Lightning's file for the non-tensor part of a sharded checkpoint folder
TRACKING_FILE = "tracking.json"  # <output_dir>/tracking.json: which logger ran and where its files are


class RunWandbLogger(WandbLogger):
    """`WandbLogger` whose run config is the resolved RunConfig at the top level.

    The system saves its hyperparameters as `{"config": {...}}`; unwrapping that keeps W&B's config
    panel (and sweeps) keyed `model.num_latents`, not `config.model.num_latents`.
    """

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._wandb_init.pop("anonymous", None)  # deprecated in W&B; passing it only prints a warning

    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        params = vars(params) if isinstance(params, Namespace) else dict(params)
        if set(params) == {"config"} and isinstance(params["config"], dict):
            params = params["config"]
        super().log_hyperparams(params)


def has_credentials() -> bool:
    """An API key in the environment or in ~/.netrc for the W&B host (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(config: RunConfig) -> str:
    """logger.mode, else WANDB_MODE, else online with credentials and offline without."""
    given = config.logger.mode or os.environ.get("WANDB_MODE")
    if not given:
        return "online" if has_credentials() else "offline"
    mode = MODE_ALIASES.get(given, given)
    if mode not in MODES:
        source = "logger.mode" if config.logger.mode else "WANDB_MODE"
        raise ConfigError(f"{source}={given!r} is unknown; choose one of {', '.join(MODES)}")
    return mode


def launch_rank() -> int:
    """Global rank of this process as the launcher set it, before any Trainer exists (0 when launched alone)."""
    for key in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    local = int(os.environ.get("LOCAL_RANK", 0) or 0)
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)) or 0)
    return 0 if local == 0 and node == 0 else 1  # any rank but zero: only "is it zero" matters here


def stored_run_id(ckpt_path: str | None) -> str | None:
    if not ckpt_path:
        return None
    path = Path(ckpt_path)
    if path.is_dir():  # a sharded (FSDP) checkpoint keeps everything but the tensors in meta.pt
        path = path / SHARDED_METADATA
    if not path.is_file():
        return None
    # mmap: only the small metadata is read, not every tensor of a large checkpoint
    checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    return checkpoint.get(RUN_ID_KEY)


def new_run_id() -> str:
    """Chosen here, not by W&B, so the checkpoint can carry it before the run has even started."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def csv_logger(config: RunConfig) -> CSVLogger:
    return CSVLogger(config.output_dir, name="logs")


def check_writable(directory: str) -> None:
    """W&B silently moves a run to the system temp dir when its dir is unusable; refuse instead."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(f"directory {directory!r} cannot be created ({error.strerror or error})") from None
    if not path.is_dir() or not os.access(path, os.W_OK):
        raise OSError(f"directory {directory!r} is not writable")


def build_logger(config: RunConfig, ckpt_path: str | None = None) -> Logger | bool:
    """The job's logger; `ckpt_path` (the checkpoint being resumed) supplies the W&B run to continue."""
    kind = config.logger.kind
    if kind not in KINDS:
        raise ConfigError(f"logger.kind={kind!r} is unknown; choose one of {', '.join(KINDS)}")
    if kind == "none":
        return False
    if kind == "csv":
        return record(config, csv_logger(config))
    mode = resolve_mode(config)
    if mode == "disabled":
        logger = csv_logger(config)
        if launch_rank() == 0:
            print(f"W&B is disabled (mode=disabled); logging to CSV in {logger.log_dir}", file=sys.stderr)
        return record(config, logger)

    import wandb

    options = config.logger
    save_dir = os.environ.get("WANDB_DIR") or config.output_dir
    started = time.monotonic()
    unreachable = None
    if mode == "online" and launch_rank() == 0:  # W&B's own retries add up to minutes without network
        unreachable = server_problem(os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url,
                                     options.init_timeout_s / 3)
    remaining = max(1.0, options.init_timeout_s - (time.monotonic() - started))
    logger = RunWandbLogger(
        project=options.project, entity=options.entity, group=options.group, tags=list(options.tags) or None,
        notes=options.notes, name=options.name, id=stored_run_id(ckpt_path) or new_run_id(),
        save_dir=save_dir, mode=mode, resume="allow", config=to_dict(config),
        log_model=options.log_model and mode == "online",  # offline runs cannot upload artifacts
        settings=wandb.Settings(init_timeout=remaining),
    )
    if launch_rank() != 0:
        return logger  # never starts a run here: Lightning hands other ranks a dummy experiment
    if options.log_model and mode != "online":
        print("logger.log_model: checkpoints are uploaded as W&B artifacts only by online runs; "
              "this run is offline, so they stay on disk", file=sys.stderr)
    try:
        check_writable(save_dir)
        if unreachable:
            raise ConnectionError(unreachable)
        _ = logger.experiment  # start now: a failure here becomes the CSV fallback, not a crash mid-fit
    except Exception as error:  # noqa: BLE001 - whatever stops W&B must not stop training
        if wandb.run is not None:
            wandb.finish(exit_code=1, quiet=True)
        fallback = csv_logger(config)
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        bound = f", online start-up bounded by logger.init_timeout_s={options.init_timeout_s:g}s" if mode == "online" else ""
        print(f"W&B could not start ({reason}{bound}); logging to CSV in {fallback.log_dir} instead", file=sys.stderr)
        return record(config, fallback)
    return record(config, logger)


def server_problem(base_url: str, timeout_s: float) -> str | None:
    """Why the W&B server at `base_url` cannot be used, or None if it answers HTTP within `timeout_s`.

    Any HTTP answer counts (even an error status): only a server that cannot be reached or does not answer
    is ruled out. The name lookup, which no socket timeout bounds, runs in a thread that is given up on.
    """
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(base_url, timeout=timeout_s).close()
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)
        except Exception as error:  # noqa: BLE001 - any other failure means no server to talk to
            reason = getattr(error, "reason", error)
            outcome.append(f"{base_url} does not answer: {reason}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s + 0.5)
    return outcome[0] if outcome else f"{base_url} does not answer within {timeout_s:g}s"


def record(config: RunConfig, logger: Logger) -> Logger:
    """Write <output_dir>/tracking.json so `perceiver_mt.report` finds the run's own log files."""
    if launch_rank() != 0:
        return logger
    if isinstance(logger, WandbLogger):
        run = logger.experiment
        entry = {"logger": "wandb", "mode": run.settings.mode, "run_id": run.id,
                 "run_dir": str(Path(run.dir).resolve().parent)}
    else:
        entry = {"logger": "csv", "log_dir": str(Path(logger.log_dir).resolve())}
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / TRACKING_FILE).write_text(json.dumps(entry, indent=2))
    return logger


def finish(trainer: Trainer) -> None:
    """Close the W&B run on the rank that owns it, and wait until its .wandb file is complete.

    `run.finish()` alone returns while W&B's service may still be writing the last records (seen with
    W&B 0.31 under load); `wandb.teardown()` waits for the service to write and upload everything.
    """
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            import wandb

            logger.experiment.finish()
            wandb.teardown()
