"""Reads a W&B offline run's `.wandb` file: the records the run wrote, as protobufs, without W&B's service.

The file is a LevelDB-style log. It opens with a 7-byte W&B header: b":W&B", magic 0xBEE1 (uint16 LE),
version 0 (uint8). Then 32 KiB blocks of chunks, each a 7-byte header (checksum uint32 LE, length uint16
LE, type uint8: FULL=1, FIRST=2, MIDDLE=3, LAST=4) and its data; a record split across blocks is
FIRST, MIDDLE..., LAST; a block tail shorter than a header is zero padding. Unlike LevelDB, the checksum
is zlib's CRC-32 (not CRC-32C, unmasked) of the type byte followed by the data. Each whole record
parses as `wandb.proto.wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
BLOCK = 32 * 1024
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class CorruptRunFile(ValueError):
    pass


def chunks(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of every chunk, checksums verified."""
    offset = len(HEADER)
    while offset + CHUNK_HEADER <= len(data):
        room = BLOCK - offset % BLOCK
        if room < CHUNK_HEADER:  # zero padding at the end of a block
            offset += room
            continue
        checksum, length, kind = struct.unpack_from("<IHB", data, offset)
        if kind == 0 and length == 0:  # preallocated zeros after the last record
            return
        start = offset + CHUNK_HEADER
        payload = data[start:start + length]
        if len(payload) != length or length > room - CHUNK_HEADER:
            raise CorruptRunFile(f"chunk at byte {offset} runs past its block or the file")
        if zlib.crc32(bytes([kind]) + payload) != checksum:
            raise CorruptRunFile(f"checksum mismatch in chunk at byte {offset}")
        yield kind, payload
        offset = start + length


def records(path: str | Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    if data[:len(HEADER)] != HEADER:
        raise CorruptRunFile(f"{path} does not start with the W&B header {HEADER!r}")
    result, pending = [], b""
    for kind, payload in chunks(data):
        if kind == FULL:
            pending = payload
        elif kind == FIRST:
            pending = payload
            continue
        elif kind == MIDDLE:
            pending += payload
            continue
        elif kind == LAST:
            pending += payload
        else:
            raise CorruptRunFile(f"unknown chunk type {kind}")
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        result.append(record)
        pending = b""
    return result


def history(path: str | Path) -> list[dict[str, Any]]:
    """Every `run.log` row: {key: value} with values decoded from JSON (nested keys joined by '/')."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({"/".join(item.nested_key) if item.nested_key else item.key: json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def config(path: str | Path) -> dict[str, Any]:
    """The run config as the run record and later config updates left it."""
    values: dict[str, Any] = {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        updates = record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
        for item in updates:
            values[item.key] = json.loads(item.value_json)
    values.pop("_wandb", None)  # W&B's own bookkeeping
    return values


def run_record(path: str | Path) -> wandb_internal_pb2.RunRecord:
    for record in records(path):
        if record.WhichOneof("record_type") == "run":
            return record.run
    raise CorruptRunFile(f"{path} holds no run record")
