"""A registered task's dataset splits -> tar shards of a fixed sample count, plus a meta.json of counts.

The task plugin and its DataModule come from the registry and the run config exactly as in training,
so shards hold the same samples the in-memory run would see. Training samples are written in a
seeded random order, so every shard is a mix of the whole split; evaluation splits keep their order.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterable, Sized
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from tqdm import tqdm

from perceiver_mt.config import RunConfig
from perceiver_mt.plugins import build_task, build_task_datamodule
from perceiver_mt.shards.codec import encoder_for, load_npy
from perceiver_mt.shards.reader import META_FILE, shard_records, stored_counts
from perceiver_mt.task import Task

SPLITS = ("train", "val", "test")
STAGE = {"train": "fit", "val": "validate", "test": "test"}


def split_samples(datamodule: Any, split: str, seed: int) -> tuple[Iterable[dict[str, Any]], int | None]:
    """The samples of one split (the dataset behind the DataModule's loader, not its shuffled batches)."""
    datamodule.setup(STAGE[split])
    dataset = getattr(datamodule, f"{split}_dataloader")().dataset
    if isinstance(dataset, Sized) and hasattr(dataset, "__getitem__"):
        order = np.random.default_rng(seed).permutation(len(dataset)) if split == "train" else range(len(dataset))
        return (dataset[int(i)] for i in order), len(dataset)
    return iter(dataset), None  # an iterable dataset: written in its own order


def write_split(task: Task, samples: Iterable[dict[str, Any]], out: Path, split: str, shard_size: int,
                total: int | None = None) -> dict[str, int]:
    """Writes `<out>/<split>-NNNNNN.tar`; returns {shard file name: sample count}."""
    for stale in out.glob(f"{split}-*.tar"):  # a shorter rewrite must not leave old shards behind
        stale.unlink()
    counts: dict[str, int] = {}
    writer = wds.ShardWriter(str(out / f"{split}-%06d.tar"), maxcount=shard_size, maxsize=float("inf"), verbose=0,
                             encoder=False, mtime=0,  # bytes already; fixed mtime: same data, same shard bytes
                             post=lambda path: counts.__setitem__(Path(path).name, writer.count))
    keys = set()
    encode = encoder_for(task)
    with writer:
        for sample in tqdm(samples, total=total, desc=f"{task.name} {split}", unit="sample"):
            key = f"{int(sample['index']):09d}"  # the sample id, unique within a split
            if key in keys:
                raise ValueError(f"task {task.name!r} split {split!r}: sample index {key} occurs twice; "
                                 "'index' must be unique within a split")
            keys.add(key)
            writer.write({"__key__": key, **encode(sample)})
    for name in [name for name, n in counts.items() if not n]:  # ShardWriter opens a shard before any sample
        (out / name).unlink()
        del counts[name]
    return counts


def write_task(config: RunConfig, name: str, out: str | Path, shard_size: int, splits: Iterable[str] = SPLITS,
               seed: int = 0) -> dict[str, Any]:
    """Every requested split of task instance `name` -> shards under `out`; returns (and writes) meta.json."""
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split {unknown[0]!r}; choose from {', '.join(SPLITS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    task = build_task(config, name)
    datamodule = build_task_datamodule(name, task, config.tasks[name].data, config.seed)
    meta_path = out / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta.get("plugin") not in (None, config.tasks[name].plugin):
        raise ValueError(f"{out} holds shards of plugin {meta['plugin']!r}; write {name!r} to another folder")
    meta.update(format=1, task=name, plugin=config.tasks[name].plugin, options=dataclasses.asdict(task.options))
    meta.setdefault("splits", {})
    for split in splits:
        samples, total = split_samples(datamodule, split, seed)
        shards = write_split(task, samples, out, split, shard_size, total)
        meta["splits"][split] = {"num_samples": sum(shards.values()), "shards": shards}
        meta_path.write_text(json.dumps(meta, indent=2))  # after every split: a cut-off run leaves a true record
    return meta


def inspect_shard(url: str) -> dict[str, Any]:
    """{"samples": n, "fields": {file suffix: count}, "first": {suffix: "dtype shape"}, "problems": [...]} of
    one shard. Problems: a field that does not decode (its byte count must match its .npy header), and a
    record count other than the one meta.json lists for the shard (a tar cut at a record boundary is a
    valid, shorter tar). A shard that cannot be read to its end raises."""
    samples, fields, first, problems = 0, {}, {}, []
    for record in shard_records(url):
        samples += 1
        for suffix, data in record.items():
            if suffix.startswith("__"):
                continue
            fields[suffix] = fields.get(suffix, 0) + 1
            if samples == 1:
                first[suffix] = _describe(suffix, data)
            if suffix.endswith(".npy"):
                try:
                    load_npy(data)
                except Exception as error:  # noqa: BLE001 - any failure makes the record unusable
                    problems.append(f"record {record.get('__key__')!r} field {suffix}: {error}")
    listed = stored_counts([url])
    if listed is not None and listed[url] != samples:
        problems.append(f"{samples} records, but meta.json lists {listed[url]}")
    if ends_without_end_marker(url):
        problems.append("no end-of-archive marker: the file was cut off")
    return {"samples": samples, "fields": fields, "first": first, "problems": problems}


def ends_without_end_marker(url: str) -> bool:
    """A local tar that does not end in the two zero blocks every complete tar ends with (a tar cut at a
    record boundary reads as a valid, shorter one). URLs other than paths and file: are not checked."""
    path = Path(url.removeprefix("file:")) if "://" not in url and not url.startswith("pipe:") else None
    if path is None or not path.is_file() or path.stat().st_size < 1024:
        return False
    with open(path, "rb") as tar:
        tar.seek(-1024, io.SEEK_END)
        return tar.read(1024) != bytes(1024)


def _describe(suffix: str, data: bytes) -> str:
    if suffix.endswith(".npy"):
        array = np.load(io.BytesIO(data), allow_pickle=False)
        return f"{array.dtype} {tuple(array.shape)}"
    return f"{len(data)} bytes"

