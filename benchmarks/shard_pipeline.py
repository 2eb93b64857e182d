"""Training data throughput: a task's in-memory DataModule against its tar shards with 0, 1 and 2 workers.

Writes the task's training split to shards in a temporary folder (or reads `--shards`), then draws
`--batches` training batches from each pipeline, loader start-up and epoch turnovers included, and
prints samples/s and the ratio to the in-memory pipeline. The machine's load average is printed too:
other jobs on the same cores change the figures.

    python -m benchmarks.shard_pipeline [--task digits] [--config configs/debug.yaml] [--batches 400]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from perceiver_mt.config import load_config
from perceiver_mt.data import _EndlessLoader
from perceiver_mt.shards.cli import task_config
from perceiver_mt.plugins import build_task, build_task_datamodule
from perceiver_mt.shards.writer import write_task

REPO = Path(__file__).resolve().parent.parent


def samples_per_second(loader, batches: int) -> float:
    endless = _EndlessLoader(loader)
    start = time.perf_counter()
    samples = sum(len(endless.next()["index"]) for _ in range(batches))
    return samples / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="digits", help="task instance of --config, or a plugin name")
    parser.add_argument("--config", default=str(REPO / "configs" / "debug.yaml"))
    parser.add_argument("--shards", help="folder of already written shards (default: write to a temporary one)")
    parser.add_argument("--shard-size", type=int, default=200)
    parser.add_argument("--batches", type=int, default=400, help="training batches drawn per pipeline")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    config = task_config(args.config, args.task, [])
    task = build_task(config, args.task)
    data = {**config.tasks[args.task].data, "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as scratch:
        shards = args.shards or scratch
        if not args.shards:
            write_task(config, args.task, shards, args.shard_size, splits=["train"])
        memory = build_task_datamodule(args.task, task, {k: v for k, v in data.items() if k != "name"}, config.seed)
        memory.setup("fit")
        rows = [("in-memory", samples_per_second(memory.train_dataloader(), args.batches))]
        for workers in (0, 1, 2):
            stream = build_task_datamodule(args.task, task, {"name": "webdataset", "root": shards,
                                                             "batch_size": args.batch_size, "num_workers": workers},
                                           config.seed)
            stream.setup("fit")
            rows.append((f"shards, {workers} workers", samples_per_second(stream.train_dataloader(), args.batches)))
    baseline = rows[0][1]
    print(f"task {args.task}, {args.batches} batches of {args.batch_size}, load average {os.getloadavg()[0]:.1f}, "
          f"{os.cpu_count()} cores")
    print(f"{'pipeline':<20} {'samples/s':>10} {'vs in-memory':>13}")
    for name, rate in rows:
        print(f"{name:<20} {rate:>10.0f} {rate / baseline:>12.2f}x")


if __name__ == "__main__":
    main()
