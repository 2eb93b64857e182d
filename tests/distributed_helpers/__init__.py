"""Launching real multi-process runs of the debug config for the distributed tests, and reading them back.

Runs are cached by name for the whole pytest session: several tests check different facts of one run
(losses, parameters, sample ids, checkpoints), and every run costs real seconds on two cores.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[2]
RECORD_RUN = Path(__file__).with_name("record_run.py")
DEBUG_CONFIG = REPO / "configs" / "debug.yaml"
STEPS = 12

# Small but real: both tasks, warmup then cosine, gradient clipping, checkpoints every 3 steps, the whole
# validation sets at the end (so synced metrics cover every sample).
COMMON = [
    "logger.kind=none", "test=false", f"trainer.max_steps={STEPS}", f"trainer.val_check_interval={STEPS}",
    "trainer.limit_val_batches=1.0", "trainer.gradient_clip_val=1.0", "parallel.checkpoint_every_n_steps=3",
]


def per_rank_batch(scale: int) -> list[str]:
    """debug.yaml's batch sizes times `scale`: one process with scale 2 sees what two ranks see together."""
    return [f"tasks.digits.data.batch_size={16 * scale}", f"tasks.pydoc_mlm.data.batch_size={8 * scale}"]


@dataclass
class Run:
    output_dir: Path
    returncode: int
    output: str
    seconds: float
    ended_at: float  # time.time() when the last process of the run was gone

    def check(self) -> "Run":
        assert self.returncode == 0, f"run in {self.output_dir} failed ({self.returncode}):\n{self.output[-4000:]}"
        return self

    def records(self, rank: int = 0, folder: str = "record") -> list[dict[str, Any]]:
        path = self.output_dir / folder / f"rank{rank}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    def losses(self, folder: str = "record") -> dict[int, float]:
        return {row["step"]: row["loss"] for row in self.records(0, folder)}

    def metrics(self) -> dict[str, dict[str, float]]:
        return json.loads((self.output_dir / "metrics.json").read_text())

    def final_parameters(self) -> dict[str, torch.Tensor]:
        checkpoint = torch.load(self.output_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        assert checkpoint["global_step"] == STEPS, checkpoint["global_step"]
        return checkpoint["state_dict"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_command(command: list[str], output_dir: Path, env: dict[str, str] | None = None, timeout: float = 240,
                log_name: str = "run") -> Run:
    """Runs `command` from the repository root; its stdout and stderr together come back as text."""
    output_dir.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    environment.pop("MASTER_PORT", None)  # Lightning picks a free port for each run
    log = output_dir / f"{log_name}.log"
    start = time.monotonic()
    with open(log, "w") as out:
        # A new session, so a timeout can end every process of the run (Lightning's ranks are children).
        process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
            returncode = -9
    return Run(output_dir, returncode, log.read_text(), time.monotonic() - start, time.time())


def record_run(output_dir: Path, overrides: list[str], env: dict[str, str] | None = None, timeout: float = 240,
               log_name: str = "run") -> Run:
    command = [sys.executable, str(RECORD_RUN), "--config", str(DEBUG_CONFIG), f"output_dir={output_dir}",
               *COMMON, *overrides]
    return run_command(command, output_dir, env, timeout, log_name)


_ROOT: Path | None = None
_RUNS: dict[str, Any] = {}


def cached(name: str, launch: Callable[[Path], Any]) -> Any:
    """`launch(output_dir)` once per session for each name; a failed launch fails every test that uses it."""
    global _ROOT
    if name not in _RUNS:
        _ROOT = _ROOT or Path(tempfile.mkdtemp(prefix="pmt-distributed-"))
        try:
            _RUNS[name] = launch(_ROOT / name)
        except AssertionError as failure:  # remembered: a second launch would append to the same records
            _RUNS[name] = failure
    if isinstance(_RUNS[name], AssertionError):
        raise _RUNS[name]
    return _RUNS[name]


def single_process() -> Run:
    """The reference: one process, twice the per-rank batch of the two-rank runs."""
    return cached("single", lambda d: record_run(d, ["trainer.devices=1", *per_rank_batch(2)]).check())


def ddp() -> Run:
    # Activation checkpointing on: it must change nothing but memory.
    return cached("ddp", lambda d: record_run(d, ["trainer.devices=2", "trainer.strategy=ddp",
                                                  "parallel.activation_checkpointing=true", *per_rank_batch(1)]).check())


def fsdp() -> Run:
    return cached("fsdp", lambda d: record_run(d, ["trainer.devices=2", "trainer.strategy=fsdp",
                                                   "parallel.checkpoint=full", *per_rank_batch(1)]).check())


FSDP_SHARDED = ["trainer.devices=2", "trainer.strategy=fsdp", "parallel.checkpoint=sharded", *per_rank_batch(1)]
KILL_STEP = 7  # checkpoints every 3 steps: the last one before the kill is at step 6


def fsdp_killed_then_resumed() -> tuple[Run, Run]:
    """Rank 1 is SIGKILLed when step 7 starts; then the same command with ckpt_path=last."""
    def launch(output_dir: Path) -> Run:
        killed = record_run(output_dir, FSDP_SHARDED, env={"PMT_KILL_AT": f"1:{KILL_STEP}"}, log_name="killed")
        (output_dir / "record").rename(output_dir / "record_killed")
        return killed, record_run(output_dir, [*FSDP_SHARDED, "ckpt_path=last"], log_name="resumed")

    return cached("fsdp_killed", launch)
