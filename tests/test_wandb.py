"""W&B tracking, checked on real offline run files: metrics, config, media, resume, DDP, fallback."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

import wandb_reader
from perceiver_mt.config import ConfigError, load_config, to_dict
from perceiver_mt.run import build_datamodule
from perceiver_mt.system import MultiTaskSystem
from perceiver_mt.tracking import loggers, runfile
from perceiver_mt.tracking.gradients import cosine_matrix, task_gradients
from helpers import DEBUG_CONFIG, REPO, environment, free_port
from tracking_runs import RUN_OPTIONS, SHORT, TASKS, WANDB_ENV, fallback_run, offline_run, train_job


def run_files(output: Path) -> list[Path]:
    return sorted(output.glob("wandb/offline-run-*/run-*.wandb"))


def logged_keys(rows: list[dict]) -> set[str]:
    return set().union(*rows)


@pytest.mark.slow
def test_offline_run_file_holds_per_task_metrics_resolved_config_and_media() -> None:
    output = offline_run()
    [path] = run_files(output)  # exactly one run for the job (fit and validate share it)
    rows = wandb_reader.history(path)
    keys = logged_keys(rows)
    for task in TASKS:
        for metric in ("loss", "samples_per_sec", "steps_sampled", "step_share", "grad_norm_encoder"):
            assert f"train/{task}/{metric}" in keys, metric
        assert f"val/{task}/loss" in keys
    assert {"train/digits/acc", "val/digits/acc", "train/pydoc_mlm/masked_acc", "val/pydoc_mlm/masked_acc"} <= keys
    assert {"train/lr", "train/grad_norm_encoder", "train/samples_per_sec", "train/steps_per_sec"} <= keys
    assert not any("dataloader_idx" in key for key in keys)

    def values(key: str) -> list[tuple[int, float]]:
        return [(row["trainer/global_step"], row[key]) for row in rows if key in row]

    # round robin over two tasks: after 8 steps each trained 4 times, half the steps
    assert values("train/digits/steps_sampled")[-1] == (8, 4) and values("train/digits/step_share")[-1] == (8, 0.5)
    conflict = values("conflict/digits__pydoc_mlm")
    assert [step for step, _ in conflict] == [4, 8] and all(-1 <= c <= 1 for _, c in conflict)
    assert all(0 < lr <= 3e-3 for _, lr in values("train/lr"))

    media = {key.rsplit("/", 1)[0]: row[key] for row in rows for key in row if key.endswith("/_type")}
    assert media["media/digits/predictions"] == "images/separated"
    assert media["media/digits/confusion_matrix"] == "image-file"
    assert media["media/pydoc_mlm/predictions"] == "table-file"
    assert media["conflict/matrix"] == "image-file"
    captions = next(row["media/digits/predictions/captions"] for row in rows if "media/digits/predictions/captions" in row)
    assert all(caption.startswith("pred ") and " / true " in caption for caption in captions)
    table_files = list(path.parent.glob("files/media/table/media/pydoc_mlm/predictions_*.table.json"))
    table = json.loads(table_files[0].read_text())
    assert table["columns"] == ["masked input", "prediction", "truth", "masked bytes"] and len(table["data"]) == 8

    expected = to_dict(load_config(DEBUG_CONFIG, [f"output_dir={output}", *SHORT, *RUN_OPTIONS]))
    assert wandb_reader.config(path) == expected  # resolved, top level (not nested under "config")
    run = wandb_reader.run_record(path)
    assert (run.project, run.run_group, list(run.tags), run.notes, run.display_name) == (
        "tracking-test", "group-7", ["alpha", "beta"], "short offline run", "offline-run")
    assert json.loads((output / "tracking.json").read_text())["run_id"] == run.run_id


@pytest.mark.slow
def test_report_reader_matches_independent_reader() -> None:
    [path] = run_files(offline_run())
    assert runfile.history(path) == wandb_reader.history(path)


@pytest.mark.slow
def test_checkpoint_carries_run_id_and_resume_continues_the_same_run(tmp_path: Path) -> None:
    output = tmp_path / "resumed"
    shutil.copytree(offline_run(), output)
    [first] = run_files(output)
    run_id = wandb_reader.run_record(first).run_id
    checkpoint = torch.load(output / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint[loggers.RUN_ID_KEY] == run_id

    train_job(output, [*RUN_OPTIONS, "ckpt_path=last", "trainer.max_steps=12"])
    segments = run_files(output)
    assert len(segments) == 2
    second = next(p for p in segments if p != first)
    assert wandb_reader.run_record(second).run_id == run_id
    steps = [row["trainer/global_step"] for row in wandb_reader.history(second) if "train/digits/loss" in row]
    assert steps and min(steps) > 8 and max(steps) == 12  # continues after the checkpoint's step
    sampled = [row["train/digits/steps_sampled"] for row in wandb_reader.history(second)
               if "train/digits/steps_sampled" in row]
    assert sampled[-1] == 6  # counted across the restart: 4 before it, 2 after


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_ddp_job_makes_exactly_one_wandb_run(tmp_path: Path) -> None:
    output = tmp_path / "ddp"
    env = {**os.environ, **{k: v for k, v in WANDB_ENV.items() if v is not None}}
    env.pop("WANDB_DIR", None)
    command = [sys.executable, str(REPO / "train.py"), "--config", str(DEBUG_CONFIG), f"output_dir={output}",
               "trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu", *SHORT,
               "trainer.max_steps=4", "trainer.val_check_interval=2"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    log = done.stderr[-3000:]
    assert done.returncode == 0, log
    run_dirs = list(output.glob("wandb/*run-*"))
    assert len(run_dirs) == 1, (run_dirs, log)
    assert not list(tmp_path.glob("wandb")) and not list(REPO.glob("wandb"))  # no stray run elsewhere
    [path] = run_files(output)
    rows = wandb_reader.history(path)
    assert {"train/digits/loss", "train/pydoc_mlm/loss", "val/digits/acc"} <= logged_keys(rows), log
    # samples/s counts both ranks: 2 x the per-rank batch size per step
    assert max(row["train/digits/samples_per_sec"] for row in rows if "train/digits/samples_per_sec" in row) > 0


@pytest.mark.slow
def test_wandb_that_cannot_start_falls_back_to_csv_with_one_clear_line() -> None:
    output, stderr = fallback_run()
    lines = [line for line in stderr.splitlines() if "W&B could not start" in line]
    assert len(lines) == 1 and "wandb-dir-is-a-file" in lines[0] and "logging to CSV" in lines[0]
    assert not list(output.rglob("*.wandb"))
    assert json.loads((output / "tracking.json").read_text())["logger"] == "csv"
    [csv_file] = output.glob("logs/version_*/metrics.csv")
    header = csv_file.read_text().splitlines()[0].split(",")
    for task in TASKS:
        assert {f"train/{task}/loss", f"val/{task}/loss", f"train/{task}/grad_norm_encoder",
                f"train/{task}/step_share"} <= set(header)
    assert {"train/lr", "conflict/digits__pydoc_mlm"} <= set(header)
    assert list(output.glob("media/step_*/media_digits_predictions.png"))  # media kept as files
    assert list(output.glob("media/step_*/media_pydoc_mlm_predictions.csv"))
    assert (output / "metrics.json").is_file()  # the job finished

@pytest.mark.slow

def test_conflict_probe_leaves_gradients_untouched_and_matches_plain_backward() -> None:
    torch.manual_seed(0)
    config = load_config(DEBUG_CONFIG, ["logger.kind=none"])
    system = MultiTaskSystem.from_config(config)
    datamodule = build_datamodule(config, system)
    datamodule.setup("fit")
    batches = {name: next(iter(dm.train_dataloader())) for name, dm in datamodule.datamodules.items()}
    encoder = list(system.model.encoder.parameters())

    system.train()
    system.task_plugins["digits"].loss(system("digits", batches["digits"]), batches["digits"]).backward()
    before = [p.grad.clone() for p in system.parameters() if p.grad is not None]
    gradients = task_gradients(system, batches)
    after = [p.grad for p in system.parameters() if p.grad is not None]
    assert system.training and len(before) == len(after)
    assert all(torch.equal(a, b) for a, b in zip(before, after))

    expected = {}
    system.eval()
    for task, batch in batches.items():
        system.zero_grad()
        system.task_plugins[task].loss(system(task, batch), batch).backward()
        expected[task] = torch.cat([p.grad.reshape(-1) for p in encoder])
        assert torch.allclose(gradients[task], expected[task], atol=1e-6)
    a, b = expected.values()
    matrix = cosine_matrix(gradients)
    assert math.isclose(matrix[0, 1], float(torch.dot(a, b) / (a.norm() * b.norm())), abs_tol=1e-5)
    assert math.isclose(matrix[0, 0], 1.0, abs_tol=1e-5) and math.isclose(matrix[1, 0], matrix[0, 1], abs_tol=1e-6)


def test_mode_follows_config_then_wandb_mode_then_credentials(tmp_path: Path) -> None:
    empty_netrc = tmp_path / "netrc"
    empty_netrc.write_text("")
    config = load_config(DEBUG_CONFIG, [])
    with environment({"WANDB_MODE": None, "WANDB_API_KEY": None, "NETRC": str(empty_netrc)}):
        assert loggers.resolve_mode(config) == "offline"
        empty_netrc.write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
        assert loggers.resolve_mode(config) == "online"
    with environment({"WANDB_MODE": "dryrun", "WANDB_API_KEY": "k" * 40}):
        assert loggers.resolve_mode(config) == "offline"
        assert loggers.resolve_mode(load_config(DEBUG_CONFIG, ["logger.mode=disabled"])) == "disabled"
    with environment({"WANDB_MODE": "sometimes"}), pytest.raises(ConfigError, match="WANDB_MODE='sometimes'.*online"):
        loggers.resolve_mode(config)
    with pytest.raises(ConfigError, match="logger.kind='tensorboard' is unknown; choose one of wandb, csv, none"):
        loggers.build_logger(load_config(DEBUG_CONFIG, ["logger.kind=tensorboard"]))


def test_only_the_rank_zero_process_counts_as_rank_zero() -> None:
    cases = [({}, 0), ({"RANK": "1"}, 1), ({"LOCAL_RANK": "1"}, 1), ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, 1),
             ({"SLURM_PROCID": "0"}, 0), ({"RANK": "0", "LOCAL_RANK": "0"}, 0)]
    names = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
    for values, expected in cases:
        with environment({**dict.fromkeys(names), **values}):
            assert (loggers.launch_rank() == 0) == (expected == 0), values


@pytest.mark.slow
def test_online_wandb_without_a_reachable_server_gives_up_within_its_bound(tmp_path: Path) -> None:
    """A well-formed but fake key and no server: W&B's own retries took ~120 s. Both a refused connection and
    a server that accepts but never answers fall back to CSV within logger.init_timeout_s, saying so."""
    import socket
    import threading
    import time

    silent = socket.socket()  # accepts connections (the kernel does), answers nothing
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    closed = free_port()  # nothing listens there
    held: list = []
    threading.Thread(target=lambda: held.extend(silent.accept() for _ in range(8)), daemon=True).start()
    try:
        for url, reason in ((f"http://127.0.0.1:{silent.getsockname()[1]}", "timed out"),
                            (f"http://127.0.0.1:{closed}", "Connection refused")):
            config = load_config(DEBUG_CONFIG, [f"output_dir={tmp_path / str(len(held))}", "logger.mode=online"])
            stderr = io.StringIO()
            started = time.monotonic()
            with environment({"WANDB_API_KEY": "k" * 40, "WANDB_BASE_URL": url, "WANDB_MODE": None}), \
                    contextlib.redirect_stderr(stderr):
                logger = loggers.build_logger(config)
            seconds = time.monotonic() - started
            lines = [line for line in stderr.getvalue().splitlines() if "W&B" in line]
            print(f"online W&B, {reason}: CSV after {seconds:.1f}s")
            assert isinstance(logger, CSVLogger) and seconds < config.logger.init_timeout_s, (url, seconds)
            assert len(lines) == 1 and lines[0].startswith(f"W&B could not start ({url} does not answer: ")
            assert reason in lines[0] and "online start-up bounded by logger.init_timeout_s=15s); logging to CSV in" \
                in lines[0]
    finally:
        silent.close()
