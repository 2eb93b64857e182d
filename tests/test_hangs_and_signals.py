"""Nothing hangs: a batch no training set can fill is one line, under DDP too, and SIGTERM ends a run
promptly, whether it is training normally or stuck where Lightning never looks at the signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import DEBUG_CONFIG, REPO, processes_with, run_command, train_command

RECORD_RUN = Path(__file__).with_name("distributed_helpers") / "record_run.py"
QUICK = ["logger.kind=none", "test=false", "trainer.limit_val_batches=1"]


@pytest.mark.slow
def test_batch_larger_than_a_training_set_is_one_line_not_a_hang(tmp_path):
    run = run_command(train_command(DEBUG_CONFIG, tmp_path / "run", *QUICK, "tasks.digits.data.batch_size=5000"),
                      tmp_path / "run", timeout=120)
    print(f"batch larger than the training set: exit {run.returncode} after {run.seconds:.1f}s")
    assert run.returncode == 2, run.output[-3000:]  # not -9: it did not run into the timeout
    assert run.error_lines() == [
        "error: task 'digits': its training set holds 1257 samples, fewer than one batch of "
        "tasks.digits.data.batch_size=5000 (incomplete batches are dropped): use a batch size <= 1257"]


@pytest.mark.slow
@pytest.mark.distributed
def test_rank_share_smaller_than_the_batch_is_one_line_on_every_rank(tmp_path):
    """1257 digits over 2 ranks is 628 each: a batch of 700 fills on one process but on no rank."""
    output = tmp_path / "run"
    run = run_command(train_command(DEBUG_CONFIG, output, *QUICK, "trainer.devices=2", "trainer.strategy=ddp",
                                    "tasks.digits.data.batch_size=700"), output, timeout=180)
    print(f"rank share smaller than the batch (2 ranks): exit {run.returncode} after {run.seconds:.1f}s")
    assert run.returncode not in (0, -9), run.output[-3000:]
    expected = ("error: task 'digits': its training set holds 628 samples per rank (1257 over 2 ranks), fewer than "
                "one batch of tasks.digits.data.batch_size=700 (incomplete batches are dropped): use a batch size "
                "<= 628")
    assert set(run.error_lines()) == {expected}, run.output[-3000:]  # the same line from whichever rank said it
    assert not processes_with(f"output_dir={output}")


def start(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path.name} appeared"
        assert time.monotonic() < deadline, f"{path.name} did not appear within {timeout}s"
        time.sleep(0.1)


def stop(process: subprocess.Popen, timeout: float) -> tuple[int, float]:
    """SIGTERM to the run's main process; (exit status, seconds until it was gone)."""
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"still running {timeout}s after SIGTERM")
    return code, time.monotonic() - sent


@pytest.mark.slow
def test_sigterm_during_training_stops_at_the_next_step_with_one_line(tmp_path):
    output = tmp_path / "run"
    log = tmp_path / "run.log"
    process = start(train_command(DEBUG_CONFIG, output, *QUICK, "trainer.max_steps=100000",
                                  "parallel.checkpoint_every_n_steps=5", "trainer.val_check_interval=100000"), log)
    try:
        wait_for(output / "checkpoints" / "last.ckpt", process, timeout=180)
        code, seconds = stop(process, timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    lines = log.read_text().splitlines()
    print(f"SIGTERM during training: exit {code} {seconds:.1f}s after the signal")
    assert code == 128 + signal.SIGTERM, lines[-20:]
    assert seconds < 10, seconds
    assert lines[-1].startswith("stopped by SIGTERM at step ") and lines[-1].endswith(
        f"; checkpoint: {output / 'checkpoints' / 'last.ckpt'}"), lines[-5:]
    assert not any(line.startswith("Traceback") for line in lines)


@pytest.mark.slow
def test_sigterm_ends_a_stuck_run_after_the_grace_period(tmp_path):
    """The run sleeps inside a training step (a stuck data loader or collective would look the same): Lightning's
    flag is never read, and the run still ends `sigterm_grace_s` after the signal."""
    output = tmp_path / "run"
    log = tmp_path / "run.log"
    command = [sys.executable, str(RECORD_RUN), "--config", str(DEBUG_CONFIG), f"output_dir={output}", *QUICK,
               "trainer.max_steps=20", "sigterm_grace_s=3"]
    process = start(command, log, env={"PMT_HANG_AT": "0:2"})
    try:
        wait_for(output / "record" / "fault_time", process, timeout=180)
        code, seconds = stop(process, timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    lines = log.read_text().splitlines()
    print(f"SIGTERM to a stuck run (grace 3s): exit {code} {seconds:.1f}s after the signal")
    assert code == 128 + signal.SIGTERM, lines[-20:]
    assert 3 <= seconds < 3 + 10, seconds
    assert lines[-1] == ("error: still running 3s after SIGTERM (near step 2); stopped without cleaning up. Resume "
                         "with ckpt_path=last from the last checkpoint"), lines[-5:]
