"""Nothing is lost or mixed: one run per output folder, checkpoints that survive a kill at any moment of
their write, and a printed checkpoint path that is the file really written."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import DEBUG_CONFIG, REPO, run_command, train_command
from perceiver_mt.errors import ConfigError
from perceiver_mt.outputs import TEMPORARY_MARK, AtomicCheckpointIO, earlier_run, prepare_output_dir, \
    remove_temporaries, replace_folder, staging_folder

TINY = ["logger.kind=csv", "test=false", "trainer.limit_val_batches=1", "trainer.val_check_interval=2",
        "logger.conflict_every_n_steps=0"]


# --- the output folder's rules (no training needed) -------------------------------------------------------------

def fill_with_a_run(folder: Path) -> None:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (folder / "metrics.json").write_text("{}")
    (folder / "logs" / "version_0").mkdir(parents=True)


def test_a_folder_without_a_run_is_used_as_it_is(tmp_path):
    prepare_output_dir(str(tmp_path / "new"), None, overwrite=False)  # does not exist yet
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "checkpoints").mkdir()  # empty: no checkpoint was ever written
    prepare_output_dir(str(tmp_path), None, overwrite=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_folder_with_a_run_is_refused_in_one_line_unless_resumed_or_overwritten(tmp_path):
    fill_with_a_run(tmp_path)
    with pytest.raises(ConfigError) as refused:
        prepare_output_dir(str(tmp_path), None, overwrite=False)
    assert str(refused.value) == (f"output_dir={str(tmp_path)!r} already holds a run (metrics.json, checkpoints/, "
                                  "logs/): resume it with ckpt_path=last, start a new one with another "
                                  "output_dir=..., or replace it with overwrite=true")
    with pytest.raises(ConfigError, match="already holds a run"):  # a checkpoint from elsewhere would mix two runs
        prepare_output_dir(str(tmp_path), str(tmp_path.parent / "other.ckpt"), overwrite=False)
    prepare_output_dir(str(tmp_path), "last", overwrite=False)
    prepare_output_dir(str(tmp_path), str(tmp_path / "checkpoints" / "last.ckpt"), overwrite=False)
    assert earlier_run(tmp_path) == ["metrics.json", "checkpoints/", "logs/"]  # resuming touched nothing
    (tmp_path / "notes.txt").write_text("mine")
    prepare_output_dir(str(tmp_path), None, overwrite=True)
    assert earlier_run(tmp_path) == [] and (tmp_path / "notes.txt").read_text() == "mine"


def test_temporaries_of_a_killed_writer_are_removed_at_the_next_start(tmp_path):
    fill_with_a_run(tmp_path)
    stale = tmp_path / "checkpoints" / f".last.ckpt{TEMPORARY_MARK}12345"
    stale.write_bytes(b"half a checkpoint")
    prepare_output_dir(str(tmp_path), "last", overwrite=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]


# --- checkpoints killed while being written --------------------------------------------------------------------

def write_versions_forever(path: str, first_version: int, size: int, temp_dir: str) -> None:
    """Checkpoint version after version, each a tensor filled with its version number. (Filled by numpy:
    torch's thread pool does not survive the fork that starts this writer.)"""
    os.environ["TMPDIR"] = temp_dir  # a writer staging files in the temp folder would show up there
    writer = AtomicCheckpointIO()
    version = first_version
    while True:
        weights = torch.from_numpy(np.full(size, version, dtype=np.float32))
        writer.save_checkpoint({"version": version, "weights": weights}, path)
        version += 1


@pytest.mark.slow
def test_checkpoint_killed_at_any_moment_of_its_write_leaves_the_previous_one_whole(tmp_path):
    """SIGKILL a writer again and again, mostly while a write is under way: the checkpoint on disk always
    loads, holds one complete version, never goes back to an older one; no temporary outlives the next start."""
    folder, temp_dir = tmp_path / "checkpoints", tmp_path / "system-temp"
    folder.mkdir()
    temp_dir.mkdir()
    target = folder / "last.ckpt"
    size = 1 << 20  # 4 MB: a write takes long enough to be hit
    context = multiprocessing.get_context("fork")  # torch is loaded already: a new writer starts in milliseconds
    started = time.monotonic()
    AtomicCheckpointIO().save_checkpoint({"version": 0, "weights": torch.zeros(size)}, target)
    # A floor: on a fast disk one write takes a few ms, less than a forked writer needs to start, and kills
    # that all land before its first write ends would never see a new version.
    write_s = max(time.monotonic() - started, 0.02)
    rng = random.Random(0)
    kills, inside_a_write, last_version = 30, 0, 0
    for _ in range(kills):
        writer = context.Process(target=write_versions_forever, args=(str(target), last_version + 1, size,
                                                                      str(temp_dir)), daemon=True)
        writer.start()
        time.sleep(rng.uniform(0, 3 * write_s))  # any moment of the first few writes
        inside_a_write += any(TEMPORARY_MARK in name for name in os.listdir(folder))
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        checkpoint = torch.load(target, weights_only=False)
        version = checkpoint["version"]
        assert version >= last_version, "the checkpoint went back to an older version"
        assert checkpoint["weights"].shape == (size,) and bool((checkpoint["weights"] == version).all())
        last_version = version
    print(f"{kills} kills, {inside_a_write} inside a write, last version {last_version}, one write {write_s:.3f}s")
    assert inside_a_write >= kills // 4, inside_a_write  # the kills really hit writes
    assert last_version > 0 and not list(temp_dir.iterdir())  # written next to the target, nothing staged elsewhere
    remove_temporaries(folder)  # what the next run does first
    assert [p.name for p in folder.iterdir()] == ["last.ckpt"]


def write_folders_forever(target: str, first_version: int) -> None:
    """Sharded checkpoints in the order a run writes them: each rank's shard, the index, rank 0's meta.pt."""
    target_path = Path(target)
    version = first_version
    while True:
        staged = staging_folder(target_path)
        if staged.exists():
            shutil.rmtree(staged)
        staged.mkdir()
        for name in ("__0_0.distcp", "__1_0.distcp", ".metadata", "meta.pt"):
            (staged / name).write_bytes(f"{version:08d}".encode() * 20_000)
        replace_folder(staged, target_path)
        version += 1


@pytest.mark.slow
def test_sharded_checkpoint_folder_killed_at_any_moment_is_whole_after_the_next_start(tmp_path):
    """Folders cannot be renamed over each other in one step: a kill between the two renames leaves no
    `last.ckpt`, and the next start (`prepare_output_dir`) puts the right complete folder in place."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    target = folder / "last.ckpt"
    context = multiprocessing.get_context("fork")
    rng = random.Random(1)
    last_version, between_renames = 0, 0
    for _ in range(60):
        writer = context.Process(target=write_folders_forever, args=(str(target), last_version + 1), daemon=True)
        writer.start()
        time.sleep(rng.uniform(0.001, 0.02))
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        between_renames += not target.exists() and last_version > 0
        prepare_output_dir(str(tmp_path), "last", overwrite=False)  # what the resumed run does first
        if target.exists():
            versions = {int((target / name).read_bytes()[:8]) for name in ("__0_0.distcp", "__1_0.distcp",
                                                                             ".metadata", "meta.pt")}
            assert len(versions) == 1, f"a folder mixing checkpoints {versions}"
            version = versions.pop()
            assert version >= last_version, "the checkpoint went back to an older version"
            last_version = version
        else:
            assert last_version == 0, "a complete checkpoint was lost"
        assert [p.name for p in folder.iterdir()] in ([], ["last.ckpt"])  # temporaries gone
    print(f"60 kills, {between_renames} between the two renames, last version {last_version}")
    assert last_version > 0


def test_a_kill_between_the_two_renames_of_a_folder_loses_nothing(tmp_path):
    """The moment the loop above rarely hits: the old folder renamed aside, the new one not yet in place."""
    folder = tmp_path / "checkpoints"
    target = folder / "last.ckpt"

    def sharded(path: Path, version: str, complete: bool = True) -> None:
        path.mkdir(parents=True)
        for name in ("__0_0.distcp", ".metadata", "meta.pt")[: 3 if complete else 1]:
            (path / name).write_text(version)

    sharded(folder / f".last.ckpt{TEMPORARY_MARK}previous", "old")
    sharded(staging_folder(target), "new")
    prepare_output_dir(str(tmp_path), "last", overwrite=False)
    assert (target / "meta.pt").read_text() == "new" and [p.name for p in folder.iterdir()] == ["last.ckpt"]

    shutil.rmtree(target)  # an incomplete staged folder is never taken: the previous one comes back
    sharded(folder / f".last.ckpt{TEMPORARY_MARK}previous", "old")
    sharded(staging_folder(target), "half", complete=False)
    prepare_output_dir(str(tmp_path), "last", overwrite=False)
    assert (target / "meta.pt").read_text() == "old" and [p.name for p in folder.iterdir()] == ["last.ckpt"]


@pytest.mark.slow
def test_training_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(tmp_path):
    """The real job, checkpointing every step with the system temp folder on another filesystem (tmpfs,
    where a copy from it is not atomic): killed while a checkpoint is being written, it resumes and finishes."""
    output = tmp_path / "run"
    temp_dir = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path
    command = train_command(DEBUG_CONFIG, output, *TINY, "trainer.max_steps=400", "parallel.checkpoint_every_n_steps=1",
                            "trainer.val_check_interval=400")
    env = {**os.environ, "TMPDIR": str(temp_dir), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    folder = output / "checkpoints"
    killed_inside_a_write = False
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            names = os.listdir(folder) if folder.is_dir() else []
            if "last.ckpt" in names and any(TEMPORARY_MARK in name for name in names):
                os.killpg(process.pid, signal.SIGKILL)
                killed_inside_a_write = True
                break
            time.sleep(0.0005)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert killed_inside_a_write, "no checkpoint write was caught in 120 s"
    step = torch.load(folder / "last.ckpt", weights_only=False)["global_step"]
    assert step >= 1
    resumed = run_command(train_command(DEBUG_CONFIG, output, *TINY, f"trainer.max_steps={step + 2}", "ckpt_path=last"),
                          tmp_path / "resumed", timeout=180).check()
    assert "Restored all states from the checkpoint" in resumed.output
    assert torch.load(folder / "last.ckpt", weights_only=False)["global_step"] == step + 2
    assert [p.name for p in folder.iterdir()] == ["last.ckpt"]  # the killed writer's temporary is gone


# --- a second run in the same folder ---------------------------------------------------------------------------

@pytest.mark.slow
def test_second_run_in_a_used_folder_is_refused_and_resuming_continues_the_same_files(tmp_path):
    output = tmp_path / "run"
    first = run_command(train_command(DEBUG_CONFIG, output, *TINY, "trainer.max_steps=2"), tmp_path / "first",
                        timeout=180).check()
    kept = {name: (output / name).read_bytes() for name in ("metrics.json", "checkpoints/last.ckpt")}
    assert f"checkpoint: {output / 'checkpoints' / 'last.ckpt'}" in first.output

    refused = run_command(train_command(DEBUG_CONFIG, output, *TINY, "trainer.max_steps=2", "seed=1"),
                          tmp_path / "second", timeout=180)
    assert refused.returncode == 2 and refused.error_lines() == [
        f"error: output_dir={str(output)!r} already holds a run (metrics.json, tracking.json, checkpoints/, logs/, "
        "media/): resume it with ckpt_path=last, start a new one with another output_dir=..., or replace it with "
        "overwrite=true"]
    assert {name: (output / name).read_bytes() for name in kept} == kept  # the first run is untouched

    resumed = run_command(train_command(DEBUG_CONFIG, output, *TINY, "trainer.max_steps=4", "ckpt_path=last"),
                          tmp_path / "resumed", timeout=180).check()
    # The same file, overwritten in place (no last-v1.ckpt), and the line names it.
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["last.ckpt"]
    assert torch.load(output / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    assert f"checkpoint: {output / 'checkpoints' / 'last.ckpt'}" in resumed.output
    assert json.loads((output / "metrics.json").read_text()) != json.loads(kept["metrics.json"])


@pytest.mark.slow
def test_what_is_printed_is_what_was_written(tmp_path, capsys):
    """No training step: no checkpoint, and the last line says so (it used to print a path that did not exist).
    `ckpt_path=last` with nothing to resume says it starts at step 0."""
    from train import main

    output = tmp_path / "run"
    assert main(["--config", str(DEBUG_CONFIG), f"output_dir={output}", *TINY, "trainer.max_steps=0",
                 "ckpt_path=last"]) == 0
    captured = capsys.readouterr()
    assert f"ckpt_path=last: no checkpoint in {output / 'checkpoints'} yet; starting at step 0" in captured.err
    assert captured.out.strip().splitlines()[-1] == (f"metrics: {output / 'metrics.json'}  "
                                                     "checkpoint: none written (no training step was taken)")
    assert not (output / "checkpoints" / "last.ckpt").exists() and (output / "metrics.json").is_file()

