"""Damaged shards lose nothing silently: a shard shorter than its meta.json says is corrupt (`inspect` exits 1,
training and evaluation count the samples lost, strict mode stops), and evaluation metrics say over how
many samples they were computed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from datamodules.webdataset import WebDatasetDataModule
from helpers import DEBUG_CONFIG, REPO, run_command, train_command
from perceiver_mt.config import load_config
from perceiver_mt.plugins import build_task
from perceiver_mt.shards.cli import main
from perceiver_mt.shards.reader import ShardReadError
from perceiver_mt.shards.writer import write_task

FIELDS = 3  # digits records: index.npy, inputs.npy, target.npy


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """digits written with 300 samples per shard: train 300, 300, 300, 300, 57; val 270; test 270."""
    out = tmp_path_factory.mktemp("digits")
    write_task(load_config(DEBUG_CONFIG), "digits", out, 300)
    return out


def cut(shard: Path, records: int, extra_bytes: int = 0) -> None:
    """Keep the first `records` records of `shard` (plus `extra_bytes` into the next one): a copy cut off."""
    with tarfile.open(shard) as tar:
        offset = tar.getmembers()[records * FIELDS].offset
    data = shard.read_bytes()
    shard.write_bytes(data[:offset + extra_bytes])


def damaged_copy(shards: Path, folder: Path, name: str, records: int, extra_bytes: int = 0) -> Path:
    shutil.copytree(shards, folder)
    cut(folder / name, records, extra_bytes)
    return folder / name


@pytest.mark.slow
def test_inspect_exits_1_for_a_shard_cut_at_a_record_boundary_or_inside_a_record(shards, tmp_path):
    at_boundary = damaged_copy(shards, tmp_path / "boundary", "train-000000.tar", 150)  # a valid, shorter tar
    inside = damaged_copy(shards, tmp_path / "inside", "train-000001.tar", 150, extra_bytes=700)
    alone = tmp_path / "alone.tar"  # no meta.json beside it: only the missing end-of-archive marker tells
    shutil.copy(at_boundary, alone)
    result = subprocess.run([sys.executable, "-m", "perceiver_mt.shards", "inspect", str(at_boundary), str(inside),
                             str(alone), str(shards / "train-000002.tar")], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1, result.stderr[-2000:]
    out = result.stdout
    assert f"{at_boundary}: 150 samples" in out and "corrupt: 150 records, but meta.json lists 300" in out
    assert "corrupt: no end-of-archive marker: the file was cut off" in out
    assert f"{inside}: corrupt: unreadable: ReadError" in out
    assert f"{alone}: 150 samples" in out and out.count("no end-of-archive marker") == 2
    assert f"{shards / 'train-000002.tar'}: 300 samples" in out
    assert main(["inspect", str(shards / "train-000002.tar"), str(shards / "val-000000.tar")]) == 0  # intact: 0


def train_stream(task, folder: Path, url: Path, **options) -> WebDatasetDataModule:
    dm = WebDatasetDataModule(task=task, root=str(folder), train_urls=str(url), batch_size=16, shuffle_buffer=0,
                              **options)
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1)
    dm.setup("fit")
    return dm


def test_training_counts_the_samples_a_short_shard_lost_and_strict_mode_stops(shards, tmp_path):
    task = build_task(load_config(DEBUG_CONFIG), "digits")
    shard = damaged_copy(shards, tmp_path / "cut", "train-000000.tar", 150)
    dm = train_stream(task, tmp_path / "cut", shard, batches_per_epoch=9)  # 144 samples: the end is not reached
    assert len(list(dm.train_dataloader())) == 9 and dm.data_stats()["skipped_samples"] == 0
    dm = train_stream(task, tmp_path / "cut", shard, batches_per_epoch=10)  # 160: past the end of the 150
    assert len(list(dm.train_dataloader())) == 10
    assert dm.data_stats() == {"skipped_samples": 150.0}  # the samples, not one event per shard
    strict = train_stream(task, tmp_path / "cut", shard, batches_per_epoch=10, strict=True)
    with pytest.raises(ShardReadError, match=f"bad data in shard {shard}: ends after 150 of the 300 records its "
                                             "meta.json lists"):
        list(strict.train_dataloader())


def test_evaluation_counts_the_samples_lost_per_split(shards, tmp_path):
    task = build_task(load_config(DEBUG_CONFIG), "digits")
    damaged_copy(shards, tmp_path / "cut", "val-000000.tar", 171)
    for world in (1, 2):
        read, lost = 0, 0
        for rank in range(world):
            dm = WebDatasetDataModule(task=task, root=str(tmp_path / "cut"), batch_size=16)
            dm.trainer = SimpleNamespace(global_rank=rank, world_size=world)
            dm.setup("validate")
            read += sum(len(batch["index"]) for batch in dm.val_dataloader())
            lost += dm.data_stats("val")["skipped_samples"]
            assert dm.data_stats("test") == {"skipped_samples": 0.0}
        assert (read, lost) == (171, 99), world  # every one of the 270 either read or counted, once


@pytest.mark.slow
def test_run_on_a_damaged_validation_shard_reports_samples_and_losses_beside_its_metrics(shards, tmp_path):
    damaged_copy(shards, tmp_path / "cut", "val-000000.tar", 171)
    output = tmp_path / "run"
    run = run_command(train_command(DEBUG_CONFIG, output, "logger.kind=csv", "trainer.max_steps=2",
                                    "trainer.limit_val_batches=1.0", "trainer.limit_test_batches=1.0",
                                    "trainer.val_check_interval=2", "logger.conflict_every_n_steps=0",
                                    "tasks.digits.data.name=webdataset", f"tasks.digits.data.root={tmp_path / 'cut'}"),
                      output, timeout=240).check()
    metrics = json.loads((output / "metrics.json").read_text())
    digits, text = metrics["digits"], metrics["pydoc_mlm"]
    assert (digits["val/samples"], digits["val/skipped_samples"]) == (171, 99)
    assert (digits["test/samples"], digits["test/skipped_samples"]) == (270, 0)
    assert text["val/samples"] > 0 and "val/skipped_samples" not in text  # in memory: nothing to skip, nothing claimed
    assert "skipped bad data in shard" in run.output and "(99 samples lost)" in run.output
