"""Short real training jobs shared by the tracking tests (each runs once per session, in-process)."""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import shutil
import tempfile
from pathlib import Path

from helpers import DEBUG_CONFIG, environment
from perceiver_mt.config import load_config
from perceiver_mt.run import train

TASKS = ("digits", "pydoc_mlm")

# Offline W&B, quiet, nothing read from git or the console.
WANDB_ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
             "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true", "WANDB_DIR": None}
# 8 steps, validation at 4 and 8, everything logged every 2 steps, conflict probe at 4 and 8.
SHORT = ["trainer.max_steps=8", "trainer.val_check_interval=4", "trainer.limit_val_batches=1",
         "trainer.log_every_n_steps=2", "logger.conflict_every_n_steps=4", "test=false"]
RUN_OPTIONS = ["logger.project=tracking-test", "logger.group=group-7", "logger.tags=[alpha,beta]",
               "logger.notes=short offline run", "logger.name=offline-run"]


def scratch_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="tracking-test-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def train_job(output_dir: Path, overrides: list[str], env: dict[str, str | None] | None = None) -> str:
    """Runs `train` on the debug config; returns what it wrote to stderr."""
    config = load_config(DEBUG_CONFIG, [f"output_dir={output_dir}", *SHORT, *overrides])
    stderr = io.StringIO()
    with environment({**WANDB_ENV, **(env or {})}), contextlib.redirect_stderr(stderr):
        train(config)
    return stderr.getvalue()


@functools.cache
def offline_run() -> Path:
    """output_dir of one finished offline W&B job (do not modify: tests copy it first)."""
    output = scratch_dir() / "offline"
    train_job(output, RUN_OPTIONS)
    return output


@functools.cache
def fallback_run() -> tuple[Path, str]:
    """output_dir and stderr of a job whose W&B could not start (WANDB_DIR is a file)."""
    root = scratch_dir()
    not_a_dir = root / "wandb-dir-is-a-file"
    not_a_dir.write_text("")
    output = root / "fallback"
    return output, train_job(output, [], {"WANDB_DIR": str(not_a_dir)})
