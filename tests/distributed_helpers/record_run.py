"""`train.py` plus a record of what every rank did, and injected faults, for the distributed tests.

    python tests/distributed_helpers/record_run.py --config configs/debug.yaml [key=value ...]

Each rank appends one JSON line per optimizer step to `<output_dir>/record/rank<r>.jsonl`:
{"step", "world", "tasks", "loss" (of the global batch: the mean over ranks of the loss each rank
backpropagated), "indices": {task: sample ids this rank trained on}}.

Faults, from the environment (Lightning re-runs this script for the other ranks, environment included):
    PMT_KILL_AT=<rank>:<step>   that rank SIGKILLs itself when step <step> starts (a dead machine)
    PMT_HANG_AT=<rank>:<step>   that rank sleeps for 10 minutes there (a hung machine)
Before either, the rank writes the time to `<output_dir>/record/fault_time`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer

from perceiver_mt.config import ConfigError, load_config
from perceiver_mt.run import train


def fault(name: str) -> tuple[int, int] | None:
    value = os.environ.get(name)
    if not value:
        return None
    rank, step = value.split(":")
    return int(rank), int(step)


class StepRecorder(Callback):
    def __init__(self, output_dir: str):
        self.dir = Path(output_dir) / "record"

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        for name, act in (("PMT_KILL_AT", lambda: os.kill(os.getpid(), signal.SIGKILL)), ("PMT_HANG_AT", lambda: time.sleep(600))):
            where = fault(name)
            if where == (trainer.global_rank, trainer.global_step):
                (self.dir / "fault_time").write_text(repr(time.time()))
                act()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"].detach().double().clone()
        if dist.is_initialized():
            dist.all_reduce(loss)
            loss /= dist.get_world_size()
        row = {
            "step": trainer.global_step - 1, "world": trainer.world_size, "tasks": sorted(batch),
            "loss": float(loss), "indices": {task: b["index"].tolist() for task, b in batch.items()},
        }
        with open(self.dir / f"rank{trainer.global_rank}.jsonl", "a") as out:
            out.write(json.dumps(row) + "\n")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)  # two ranks share two cores
    train(config, callbacks=[StepRecorder(config.output_dir)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
