"""`python -m perceiver_mt.shards write|inspect`, and every built-in task training from shards by config alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import DEBUG_CONFIG, REPO
from perceiver_mt.config import load_config
from perceiver_mt.run import train
from perceiver_mt.shards.cli import main


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perceiver_mt.shards", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """Evaluation splits of both debug tasks, written the way a user would."""
    root = tmp_path_factory.mktemp("cli")
    digits = root / "digits"
    result = run_module("write", "--task", "digits", "--out", str(digits), "--shard-size", "100", "--splits", "val", "test")
    assert result.returncode == 0, result.stderr
    assert "val: 270 samples in 3 shards" in result.stdout and "test: 270 samples in 3 shards" in result.stdout
    assert "digits val" in result.stderr  # the progress bar
    mlm = root / "mlm"
    assert main(["write", "--task", "pydoc_mlm", "--config", str(DEBUG_CONFIG), "--out", str(mlm), "--shard-size", "500",
                 "--splits", "val", "test"]) == 0
    return {"digits": digits, "pydoc_mlm": mlm}


@pytest.mark.slow
def test_write_lays_out_shards_and_counts(written):
    meta = json.loads((written["digits"] / "meta.json").read_text())
    assert meta["plugin"] == "digits" and meta["splits"]["val"]["shards"] == {
        "val-000000.tar": 100, "val-000001.tar": 100, "val-000002.tar": 70}
    assert sorted(p.name for p in written["digits"].glob("*.tar")) == [
        f"{split}-{i:06d}.tar" for split in ("test", "val") for i in range(3)]
    assert "train" not in meta["splits"]


@pytest.mark.slow
def test_inspect_prints_count_and_fields(written, capsys):
    assert main(["inspect", str(written["digits"] / "val-{000001..000002}.tar")]) == 0
    out = capsys.readouterr().out
    assert "val-000001.tar: 100 samples" in out and "val-000002.tar: 70 samples" in out
    assert "inputs.npy" in out and "float16 (8, 8)" in out and "target.npy" in out and "index.npy" in out
    mlm = sorted(written["pydoc_mlm"].glob("val-*.tar"))[0]
    assert main(["inspect", f"pipe:cat {mlm}"]) == 0
    out = capsys.readouterr().out
    assert "loss_mask.npy" in out and "bool (32,)" in out and "int16 (32,)" in out and "uint8 (32,)" in out


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["write", "--task", "nonesuch", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown task 'nonesuch'" in err and "digits" in err
    assert main(["write", "--task", "digits", "--out", str(tmp_path), "--shard-size", "0"]) == 2
    assert "shard size must be >= 1" in capsys.readouterr().err
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"\0garbage" * 200)
    assert main(["inspect", str(broken)]) == 1
    assert f"{broken}: corrupt: unreadable" in capsys.readouterr().out


@pytest.mark.slow
def test_every_builtin_task_trains_from_shards_by_config_alone(written, tmp_path):
    overrides = [f"output_dir={tmp_path / 'run'}", "logger.kind=none", "trainer.max_steps=4",
                 "trainer.val_check_interval=4"]
    for task, folder in written.items():
        urls = str(folder / "val-{000000..000002}.tar") if task == "digits" else str(folder / "val-000000.tar")
        overrides += [f"tasks.{task}.data.name=webdataset", f"tasks.{task}.data.root={folder}",
                      f"tasks.{task}.data.train_urls={urls}"]  # no train split written: train on val shards
    metrics = train(load_config(DEBUG_CONFIG, overrides))
    assert set(metrics) == {"digits", "pydoc_mlm"}
    assert {"test/acc", "val/acc"} <= set(metrics["digits"]) and "test/masked_acc" in metrics["pydoc_mlm"]
