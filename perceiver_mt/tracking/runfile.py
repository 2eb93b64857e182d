"""Metric history of a W&B offline run, read straight from its `.wandb` file (no W&B service, no network).

The file is W&B's LevelDB-style record log: a 7-byte header (b":W&B", 0xBEE1, version 0), then 32 KiB
blocks of chunks, each `<crc32 uint32><length uint16><type uint8>` + data (FULL=1, FIRST=2, MIDDLE=3,
LAST=4). Whole records are `wandb_internal_pb2.Record` protobufs; `history` records hold each logged
row as key -> JSON value.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK, CHUNK_HEADER = 32 * 1024, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def raw_records(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    if not data.startswith(HEADER):
        raise ValueError(f"{path} is not a W&B run file (it does not start with {HEADER!r})")
    offset, pending = len(HEADER), b""
    while offset + CHUNK_HEADER <= len(data):
        room = BLOCK - offset % BLOCK
        if room < CHUNK_HEADER:  # block tail too short for a header: padding
            offset += room
            continue
        checksum, length, kind = struct.unpack_from("<IHB", data, offset)
        payload = data[offset + CHUNK_HEADER:offset + CHUNK_HEADER + length]
        if kind == 0 or len(payload) < length or zlib.crc32(bytes([kind]) + payload) != checksum:
            return  # end of what was written (a run still open, or killed, stops mid-block)
        offset += CHUNK_HEADER + length
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            yield pending


def history(path: Path) -> list[dict[str, Any]]:
    """Every logged row of the run, {key: value}; media rows hold their JSON descriptions."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for raw in raw_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({"/".join(item.nested_key) if item.nested_key else item.key: json.loads(item.value_json)
                         for item in record.history.item})
    return rows
