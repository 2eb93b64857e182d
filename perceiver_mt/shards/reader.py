"""Tar shards -> batches, aware of rank and DataLoader worker, robust to bad data.

Training (`TrainShardStream`): every rank and worker walks the whole shard list in its own seeded
random order, pass after pass, and stops after a fixed number of batches. The stream never runs dry,
so every rank yields the same number of batches whatever the shard count or sizes: uneven shards
cannot leave one DDP rank waiting for another. (webdataset's `ResampledShards` + `with_epoch` idea,
seeded by (seed, epoch, rank, worker) so a run is reproducible.)

Evaluation (`EvalShardStream`): every sample exactly once across all ranks and workers. With at least
as many shards as readers, shards are split between them (webdataset's split_by_node, then
split_by_worker); with fewer, every reader reads every shard and keeps every n-th record, so no rank
is left without data. Ranks may get different batch counts: evaluation runs no per-step collectives.

Bad data: a shard that fails to open or read (truncated tar), that holds fewer records than its
meta.json lists (a tar cut at a record boundary reads as a shorter, valid tar), a record that fails to
decode, or a record whose fields, dtypes or shapes differ from the stream's first record is skipped
with a warning, and the samples lost are counted in `SkipCounter`; with `strict` it raises
`ShardReadError` naming the shard.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import multiprocessing
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import urlparse

import torch
from torch.utils.data import IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate
from webdataset.gopen import gopen, gopen_schemes
from webdataset.shardlists import expand_urls as wds_expand_urls
from webdataset.tariterators import group_by_keys, tar_file_expander

log = logging.getLogger("perceiver_mt.shards")
META_FILE = "meta.json"  # written by the shard writer next to the shards: per-shard sample counts

Decode = Callable[[dict[str, Any]], dict[str, Any]]


class ShardReadError(RuntimeError):
    """Bad data in a shard while reading in strict mode, or no readable data at all."""


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """"a-{000..002}.tar" / "a.tar::b.tar" / a list of such strings -> the list of shard URLs."""
    items = [urls] if isinstance(urls, str) else list(urls)
    expanded = [url for item in items for url in wds_expand_urls(str(item))]
    if not expanded:
        raise ValueError(f"no shard URLs in {urls!r}")
    return expanded


def open_url(url: str) -> Any:
    """A binary stream: webdataset's gopen for paths, file:, pipe:, http(s): and gs:; fsspec for other schemes."""
    scheme = urlparse(url).scheme
    if scheme in ("", "file") or scheme in gopen_schemes or len(scheme) == 1:  # len 1: a Windows drive
        return gopen(url, "rb")
    import fsspec  # s3://, az://, hf://, ... through whichever fsspec backend is installed

    return fsspec.open(url, "rb").open()


def read_meta(shard_url: str) -> dict[str, Any] | None:
    """The writer's meta.json beside a shard, or None (pipe: URLs, shards written elsewhere, no access)."""
    if shard_url.startswith("pipe:") or "/" not in shard_url:
        return None
    try:
        with open_url(shard_url.rsplit("/", 1)[0] + "/" + META_FILE) as stream:
            return json.loads(stream.read())
    except Exception:
        return None


def stored_counts(urls: Sequence[str]) -> dict[str, int] | None:
    """Samples per shard from the writer's meta.json files, or None if any shard is not listed."""
    metas: dict[str, dict[str, Any] | None] = {}
    counts: dict[str, int] = {}
    for url in urls:
        folder, name = url.rsplit("/", 1) if "/" in url else ("", url)
        if folder not in metas:
            metas[folder] = read_meta(url)
        meta = metas[folder]
        listed = {} if meta is None else {s: n for split in meta["splits"].values() for s, n in split["shards"].items()}
        if name not in listed:
            return None
        counts[url] = listed[name]
    return counts


class SkipCounter:
    """Skipped records and shards, shared by the DataLoader's worker processes (shared memory)."""

    def __init__(self, name: str, strict: bool):
        self.name = name  # the task instance, for messages
        self.strict = strict
        self._count = multiprocessing.Value("q", 0)

    @property
    def count(self) -> int:
        """Samples lost to bad data so far."""
        return int(self._count.value)

    def skip(self, shard: str, reason: str, samples: int = 1) -> None:
        """`samples` samples of `shard` are lost (0: bad data that loses none, e.g. records beyond the listed count)."""
        if self.strict:
            raise ShardReadError(f"task {self.name!r}: bad data in shard {shard}: {reason} "
                                 "(strict=true; set strict=false to skip and count it)")
        with self._count.get_lock():
            self._count.value += samples
        log.warning("task %r: skipped bad data in shard %s: %s (%d samples lost)", self.name, shard, reason, samples)


def shard_records(url: str) -> Iterator[dict[str, Any]]:
    """The raw records of one shard: {"__key__", "__url__", "<field>.npy": bytes, ...}."""
    stream = open_url(url)
    try:
        yield from group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))
    finally:
        stream.close()


def _signature(sample: dict[str, Any], prefix: str = "") -> tuple:
    parts: list[tuple] = []
    for name in sorted(sample):
        value = sample[name]
        if isinstance(value, dict):
            parts.extend(_signature(value, f"{prefix}{name}."))
        else:
            parts.append((prefix + name, str(value.dtype), tuple(value.shape)) if torch.is_tensor(value) else (prefix + name,))
    return tuple(parts)


def decoded_samples(urls: Iterable[str], decode: Decode, skips: SkipCounter, reader: int = 0,
                    readers: int = 1, reference: list | None = None,
                    counts: dict[str, int] | None = None) -> Iterator[dict[str, Any]]:
    """Decoded samples of `urls` in order; with readers > 1 only records at positions = reader mod readers.

    `reference` holds the first good sample's signature; later samples must match it to be batched.
    `counts` (from meta.json) are the records each shard must hold: a shard that ends early lost the rest.
    """
    reference = [] if reference is None else reference
    counts = counts or {}
    for url in urls:
        read = 0  # records of this shard seen so far
        listed = counts.get(url)
        try:
            for position, record in enumerate(shard_records(url)):
                read = position + 1
                if position % readers != reader:
                    continue
                try:
                    sample = decode(record)
                except Exception as error:
                    skips.skip(url, f"record {record.get('__key__')!r}: {error}")
                    continue
                signature = _signature(sample)
                if not reference:
                    reference.append(signature)
                elif signature != reference[0]:
                    skips.skip(url, f"record {record.get('__key__')!r} has fields {signature}, expected {reference[0]}")
                    continue
                yield sample
        except ShardReadError:
            raise
        except Exception as error:  # cannot open, or the tar stream breaks off (truncated / garbled)
            # Without a listed count the loss is unknown: the broken record at least.
            lost = _owned(read, listed, reader, readers) if listed is not None else 1
            skips.skip(url, f"unreadable after {read} records ({type(error).__name__}: {error}); rest of the "
                            "shard dropped", max(lost, 1))
            continue
        if listed is not None and read < listed:  # a tar cut at a record boundary ends quietly: the count tells
            skips.skip(url, f"ends after {read} of the {listed} records its meta.json lists",
                       _owned(read, listed, reader, readers))


def _owned(start: int, end: int, reader: int, readers: int) -> int:
    """Positions in [start, end) that belong to `reader` of `readers` (position mod readers == reader)."""
    return len(range(start + (reader - start) % readers, end, readers))


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _batches(samples: Iterator[dict[str, Any]], batch_size: int, partial: bool) -> Iterator[dict[str, Any]]:
    buffer: list[dict[str, Any]] = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) == batch_size:
            yield default_collate(buffer)
            buffer = []
    if buffer and partial:
        yield default_collate(buffer)


def _shuffled(samples: Iterator[dict[str, Any]], size: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """Shuffle buffer: fill to `size`, then emit a random element per new one (webdataset's shuffle)."""
    buffer: list[dict[str, Any]] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(size)
        buffer[i], sample = sample, buffer[i]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


class TrainShardStream(IterableDataset):
    """Exactly `batches_per_epoch` training batches per rank per pass, drawn from endlessly reshuffled shards."""

    def __init__(self, urls: Sequence[str], decode: Decode, skips: SkipCounter, batch_size: int,
                 batches_per_epoch: int, rank: int, seed: int, shuffle_buffer: int = 1000,
                 counts: dict[str, int] | None = None):
        self.urls = list(urls)
        self.counts = counts  # records per shard from meta.json, when the writer left one
        self.decode = decode
        self.skips = skips
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.rank = rank
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _endless(self, rng: random.Random) -> Iterator[dict[str, Any]]:
        """Pass after pass over all shards in a fresh order; the shuffle buffer drains at the end of each pass,
        so no sample comes twice before its pass is used up."""
        reference: list = []
        while True:
            order = list(self.urls)
            rng.shuffle(order)
            samples = decoded_samples(order, self.decode, self.skips, reference=reference, counts=self.counts)
            if self.shuffle_buffer > 1:
                samples = _shuffled(samples, self.shuffle_buffer, rng)
            produced = 0
            for sample in samples:
                produced += 1
                yield sample
            if not produced:  # without this guard, unreadable shards would spin here forever
                raise ShardReadError(f"task {self.skips.name!r}: no readable sample in any of the "
                                     f"{len(self.urls)} training shards (first: {self.urls[0]})")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers = _worker()
        # DataLoader takes batches from its workers in turn: quotas that add up to batches_per_epoch.
        quota = self.batches_per_epoch // workers + (worker < self.batches_per_epoch % workers)
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker}")
        batches = _batches(self._endless(rng), self.batch_size, partial=False)
        for _ in range(quota):
            yield next(batches)


class EvalShardStream(IterableDataset):
    """This rank's share of an evaluation split: every sample exactly once across ranks and workers, and
    the same number of batches on every rank (under FSDP each forward is a collective).

    Needs the sample count of every shard (the writer's meta.json, or one counting pass). Rank r takes
    the contiguous positions [r*N/w, (r+1)*N/w) of the split - so it only opens the shards they lie in -
    cut into ceil(ceil(N/w)/batch_size) batches; DataLoader worker k builds the batches j = k mod workers.
    """

    def __init__(self, urls: Sequence[str], counts: Sequence[int], decode: Decode, skips: SkipCounter,
                 batch_size: int, rank: int, world: int):
        self.urls = list(urls)
        self.counts = list(counts)
        self.decode = decode
        self.skips = skips
        total = sum(self.counts)
        first, last = total * rank // world, total * (rank + 1) // world
        num_batches = math.ceil(math.ceil(total / world) / batch_size)
        if last - first < num_batches:
            raise ValueError(f"{total} evaluation samples cannot fill {num_batches} batches on each of {world} ranks")
        # Global position ranges [a, b) of this rank's batches.
        self.batches = [(first + round(j * (last - first) / num_batches), first + round((j + 1) * (last - first) / num_batches))
                        for j in range(num_batches)]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers = _worker()
        mine = self.batches[worker::workers]
        if not mine:
            return
        starts = [a for a, _ in mine]
        reference: list = []
        pending: list[dict[str, Any]] = []
        current = 0  # index into `mine` of the batch being filled
        offset = 0
        for url, count in zip(self.urls, self.counts):
            shard_first, offset = offset, offset + count
            if offset <= mine[0][0] or shard_first >= mine[-1][1]:
                continue  # no position of this reader's batches lies in this shard: do not even open it
            lost = shard_first  # the position a broken-off shard loses first
            try:
                for position_in_shard, record in enumerate(shard_records(url)):
                    position = shard_first + position_in_shard
                    if position_in_shard >= count:
                        self.skips.skip(url, f"more records than the {count} its meta.json lists; extra ignored", 0)
                        break
                    if position >= mine[-1][1]:
                        break  # past this reader's last batch
                    lost = position + 1
                    j = bisect.bisect_right(starts, position) - 1
                    if j < 0 or position >= mine[j][1]:
                        continue  # another reader's sample
                    while current < j:  # batches before j are complete: positions only grow
                        if pending:
                            yield default_collate(pending)
                        pending, current = [], current + 1
                    sample = self._decoded(url, record, reference)
                    if sample is not None:
                        pending.append(sample)
                else:
                    if lost < offset:  # a tar cut at a file boundary ends quietly: the counts tell
                        self._skip(url, lost, offset, mine, f"ends after {lost - shard_first} of {count} records")
            except ShardReadError:
                raise
            except Exception as error:  # cannot open, or the tar stream breaks off: each reader counts its own losses
                self._skip(url, lost, offset, mine,
                           f"unreadable ({type(error).__name__}: {error}); rest of the shard dropped")
        if pending:
            yield default_collate(pending)
        # A batch left empty by bad data is missing here; `skips` has counted why.

    def _decoded(self, url: str, record: dict[str, Any], reference: list) -> dict[str, Any] | None:
        try:
            sample = self.decode(record)
        except Exception as error:
            self.skips.skip(url, f"record {record.get('__key__')!r}: {error}")
            return None
        signature = _signature(sample)
        if not reference:
            reference.append(signature)
        elif signature != reference[0]:
            self.skips.skip(url, f"record {record.get('__key__')!r} has fields {signature}, expected {reference[0]}")
            return None
        return sample

    def _skip(self, url: str, start: int, end: int, mine: list[tuple[int, int]], reason: str) -> None:
        """Positions [start, end) of the split are lost; this reader counts those of its own batches."""
        lost = sum(max(0, min(end, b) - max(start, a)) for a, b in mine)
        if self.skips.strict or lost:
            self.skips.skip(url, reason, lost)


def count_records(url: str) -> int:
    """Records in one shard, by reading it (for shards without the writer's meta.json).

    A shard that breaks off counts what came before plus the broken record: reading it again reports (or,
    strict, raises) the break, and counts that record as the one sample known to be lost.
    """
    count = 0
    try:
        for _ in shard_records(url):
            count += 1
    except Exception:
        count += 1
    return count
