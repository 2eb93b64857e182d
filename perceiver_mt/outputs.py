"""A run's output folder: one run per folder, checkpoints that survive a kill at any moment, and files
written whole or not at all.

    prepare_output_dir(config, resuming)   refuse a folder that holds an earlier run (unless resuming it or
                                           `overwrite=true`); remove temporary files a killed writer left
    AtomicCheckpointIO                     checkpoint files written next to their target, flushed to disk,
                                           then renamed over it: the previous one stays whole until then
    write_atomically(path, write)          the same for small files (metrics.json)
    replace_folder / recover_folder        the same for sharded checkpoint folders (one file per rank)

Why next to the target: a rename is atomic only within one filesystem. Lightning's own writer stages the
file in the system temp folder and moves it; with that folder on another filesystem (tmpfs) the move is
a copy, and a kill during it leaves `last.ckpt` empty or cut off.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from perceiver_mt.errors import ConfigError

# What a run writes into output_dir (W&B writes `wandb/` there unless WANDB_DIR says otherwise).
RUN_FILES = ("metrics.json", "tracking.json", "checkpoints", "logs", "wandb", "media")
TEMPORARY_MARK = ".tmp-"  # `.<name>.tmp-<pid>`: a file being written; any left at start-up is from a killed writer


def earlier_run(output_dir: str | Path) -> list[str]:
    """The files and folders of an earlier run in `output_dir` (an empty `checkpoints/` does not count)."""
    folder = Path(output_dir)
    found = []
    for name in RUN_FILES:
        path = folder / name
        if path.is_dir() and not any(p for p in path.iterdir() if TEMPORARY_MARK not in p.name):
            continue
        if path.exists():
            found.append(f"{name}/" if path.is_dir() else name)
    return found


def is_inside(path: str | Path, folder: str | Path) -> bool:
    return Path(folder).resolve() in Path(path).resolve().parents


def prepare_output_dir(output_dir: str, ckpt_path: str | None, overwrite: bool) -> None:
    """Called on global rank zero before anything is written. A new run never mixes with an earlier one:
    resuming (`ckpt_path=last`, or a checkpoint inside this folder) continues it; `overwrite=true` removes
    it first; anything else is refused with one line saying how to do either."""
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output_dir={output_dir!r} is a file, not a folder")
    found = earlier_run(folder)
    resuming = ckpt_path == "last" or (ckpt_path is not None and is_inside(ckpt_path, folder))
    if found and not resuming:
        if not overwrite:
            raise ConfigError(f"output_dir={output_dir!r} already holds a run ({', '.join(found)}): resume it with "
                              "ckpt_path=last, start a new one with another output_dir=..., or replace it with "
                              "overwrite=true")
        for name in found:
            path = folder / name.rstrip("/")
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        print(f"overwrite=true: removed the earlier run's {', '.join(found)} from {output_dir}", file=sys.stderr)
    recover_folder(folder / "checkpoints" / "last.ckpt")
    remove_temporaries(folder / "checkpoints")


def remove_temporaries(folder: Path) -> list[Path]:
    """Temporary files and folders of writers that were killed mid-write (they never reached their rename)."""
    removed = []
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name.startswith(".") and TEMPORARY_MARK in path.name:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                removed.append(path)
    return removed


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMPORARY_MARK}{os.getpid()}")


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (the folder's entry list is what a rename changes)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """`write(file)` into a temporary file beside `path`, flushed to disk, then renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    try:
        with open(temporary, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
        fsync_folder(path.parent)
    finally:
        temporary.unlink(missing_ok=True)  # only still there if the write failed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, with `write_atomically` instead of a copy from the system temp folder.

    A kill before the rename leaves the previous checkpoint as it was (and a temporary file that the next
    run's `prepare_output_dir` removes); a kill after it leaves the new one, complete.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        write_atomically(path, lambda out: torch.save(checkpoint, out))


# --- sharded checkpoints: a folder written by every rank ------------------------------------------------------

def staging_folder(target: Path) -> Path:
    """Where every rank writes its part of a sharded checkpoint before it replaces `target` (one name for all)."""
    return target.with_name(f".{target.name}{TEMPORARY_MARK}staged")


def previous_folder(target: Path) -> Path:
    return target.with_name(f".{target.name}{TEMPORARY_MARK}previous")


def is_complete_checkpoint_folder(folder: Path) -> bool:
    """Every rank's shards are indexed by `.metadata` (written once all are done), and rank 0 writes the
    rest of the state to meta.pt after that."""
    return (folder / ".metadata").is_file() and (folder / "meta.pt").is_file()


def replace_folder(staged: Path, target: Path) -> None:
    """A completely written folder takes the place of `target`: the old one is renamed aside, the new one
    renamed in, then the old one removed. A folder cannot be renamed over another in one step; a kill
    between the two renames leaves both whole, and `recover_folder` puts the new one in place."""
    previous = previous_folder(target)
    if previous.exists():
        shutil.rmtree(previous)
    if target.exists():
        os.rename(target, previous)
    os.rename(staged, target)
    fsync_folder(target.parent)
    if previous.exists():
        shutil.rmtree(previous)


def recover_folder(target: Path) -> None:
    """After a kill inside `replace_folder` (`target` missing): the staged folder if it is complete, else the
    previous one. Anything else left over is a temporary that `remove_temporaries` takes away."""
    if target.exists():
        return
    for candidate in (staging_folder(target), previous_folder(target)):
        if candidate.is_dir() and is_complete_checkpoint_folder(candidate):
            os.rename(candidate, target)
            return
