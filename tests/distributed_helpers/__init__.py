"""Launching real multi-process runs of the debug config for the distributed tests, and reading them back.

Runs are cached by name for the whole pytest session: several tests check different facts of one run
(losses, parameters, sample ids, checkpoints), and every run costs real seconds on two cores.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from perceiver_mt.system import MultiTaskSystem

import helpers
from helpers import DEBUG_CONFIG, run_command

RECORD_RUN = Path(__file__).with_name("record_run.py")
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


class Run(helpers.Run):
    """A run of record_run.py: what each rank did, step by step."""

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


def record_run(output_dir: Path, overrides: list[str], env: dict[str, str] | None = None, timeout: float = 240,
               log_name: str = "run") -> Run:
    command = [sys.executable, str(RECORD_RUN), "--config", str(DEBUG_CONFIG), f"output_dir={output_dir}",
               *COMMON, *overrides]
    return Run(**vars(run_command(command, output_dir, env, timeout, log_name)))


# --- comparing a run with the one-process reference ---------------------------------------------------------

LOSS_TOLERANCE = 1e-5  # relative; float32 sums in another order differ by ~1e-7 here

# Each attention's key bias gets an exactly-zero gradient (softmax is shift-invariant), so AdamW turns
# float rounding noise (~1e-9) into lr-sized steps that differ between any two runs and change nothing.
NO_EFFECT = "attention.to_k.bias"


def assert_same_training(run: Run, reference: Run) -> None:
    losses, expected = run.losses(), reference.losses()
    assert sorted(losses) == list(range(STEPS)) == sorted(expected)
    for step in expected:
        assert losses[step] == pytest.approx(expected[step], rel=LOSS_TOLERANCE), f"step {step}"


def assert_same_parameters(run: Run, reference: Run, atol: float = 1e-5) -> None:
    params, expected = run.final_parameters(), reference.final_parameters()
    assert params.keys() == expected.keys()
    for name in expected:
        if not name.endswith(NO_EFFECT):
            torch.testing.assert_close(params[name], expected[name], rtol=0, atol=atol, msg=name)


def assert_same_outputs(run: Run, reference: Run) -> None:
    """Both final checkpoints load into one process and answer alike (key biases included)."""
    models = [MultiTaskSystem.load_from_checkpoint(r.output_dir / "checkpoints" / "last.ckpt", map_location="cpu").eval()
              for r in (run, reference)]
    generator = torch.Generator().manual_seed(0)
    batches = {
        "digits": {"inputs": torch.rand(8, 8, 8, generator=generator)},
        "pydoc_mlm": {"inputs": torch.randint(0, 256, (8, 32), generator=generator)},
    }
    with torch.no_grad():
        for task, batch in batches.items():
            torch.testing.assert_close(models[0](task, batch), models[1](task, batch), rtol=0, atol=1e-4, msg=task)


def assert_same_metrics(run: Run, reference: Run) -> None:
    # Whole validation sets; the pydoc ranks hold different numbers of masked bytes, so a mean of
    # per-rank means would show in the loss's fifth digit.
    metrics, expected = run.metrics(), reference.metrics()
    assert metrics.keys() == expected.keys()
    for task in expected:
        assert metrics[task].keys() == expected[task].keys()
        for name, value in expected[task].items():
            assert metrics[task][name] == pytest.approx(value, rel=1e-5), f"{task} {name}"



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
