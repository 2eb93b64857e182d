"""Shard command line.

    python -m perceiver_mt.shards write --task digits --out /data/digits [--shard-size 1000] [--splits train val]
                                        [--config configs/default.yaml] [tasks.digits.data.batch_size=8 ...]
    python -m perceiver_mt.shards inspect /data/digits/train-000000.tar ['/data/digits/val-{000000..000001}.tar']

`--task` is a task instance of the config (its plugin, options and data settings are used), or else a
registered plugin name with default options.
"""

from __future__ import annotations

import argparse
import sys

from perceiver_mt.config import DEFAULT_CONFIG, ConfigError, RunConfig, load_config
from perceiver_mt.registry import RegistryError, registered, TASK_GROUP


def task_config(path: str, task: str, overrides: list[str]) -> RunConfig:
    config = load_config(path, overrides)
    if task in config.tasks:
        return config
    if task in registered(TASK_GROUP):  # a plugin name: one instance of it, default options
        return load_config(path, [f"tasks.{task}.plugin={task}", *overrides])
    known = ", ".join(sorted(config.tasks)) or "none"
    plugins = ", ".join(sorted(registered(TASK_GROUP)))
    raise ConfigError(f"unknown task {task!r}: not a task of {path} ({known}) nor a registered plugin ({plugins})")


def write(args: argparse.Namespace) -> None:
    from perceiver_mt.shards.writer import write_task

    config = task_config(args.config, args.task, args.overrides)
    meta = write_task(config, args.task, args.out, args.shard_size, args.splits, args.seed)
    for split in args.splits:
        info = meta["splits"][split]
        print(f"{split}: {info['num_samples']} samples in {len(info['shards'])} shards under {args.out}")


def inspect(args: argparse.Namespace) -> int:
    from perceiver_mt.shards.reader import expand_urls
    from perceiver_mt.shards.writer import inspect_shard

    failed = 0
    for url in expand_urls(args.urls):
        try:
            info = inspect_shard(url)
        except Exception as error:  # a corrupt shard: say which, keep going with the others
            print(f"{url}: corrupt: unreadable: {type(error).__name__}: {error}")
            failed += 1
            continue
        print(f"{url}: {info['samples']} samples")
        for suffix, count in sorted(info["fields"].items()):
            print(f"  {suffix:<24} {count:>8} records   first: {info['first'].get(suffix, '-')}")
        for problem in info["problems"][:5]:
            print(f"  corrupt: {problem}")
        failed += bool(info["problems"])
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perceiver_mt.shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    w = commands.add_parser("write", help="write a task's dataset splits to tar shards")
    w.add_argument("--task", required=True, help="task instance of --config, or a registered task plugin")
    w.add_argument("--out", required=True, help="output folder (local); <split>-NNNNNN.tar and meta.json")
    w.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default: %(default)s)")
    w.add_argument("--splits", nargs="+", default=["train", "val", "test"], help="default: train val test")
    w.add_argument("--config", default=str(DEFAULT_CONFIG), help="run config (default: %(default)s)")
    w.add_argument("--seed", type=int, default=0, help="order of the training samples (default: %(default)s)")
    w.add_argument("overrides", nargs="*", help="dotted.key=value config overrides, as for train.py")
    i = commands.add_parser("inspect", help="print each shard's sample count and fields")
    i.add_argument("urls", nargs="+", help="shard paths or URLs; braces expand")
    args = parser.parse_args(argv)
    try:
        if args.command == "write":
            write(args)
            return 0
        return inspect(args)
    except (ConfigError, RegistryError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
