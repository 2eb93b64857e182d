"""Sample <-> WebDataset record: every tensor of a sample dict stored as one `.npy` file named by its field.

`encoder_for(task)` / `decoder_for(task)` give a task's codec: its own `encode_sample` / `decode_sample`
if it defines them, else this one, driven by the task's `shard_fields`.

A record is the files of one sample inside a tar shard, `<key>.<field>.npy`; webdataset groups them
back by `<key>`. Nested dicts (several input modalities) become dotted fields, `inputs.image.npy`.
`.npy` keeps dtype and shape and `np.load` checks the byte count against the header, so a truncated
or garbled field fails to decode instead of becoming a wrong tensor.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

NESTING = "."  # separates nested field names in a file name; webdataset keys end at the first dot


class CorruptSample(ValueError):
    """A stored record that cannot be decoded into the sample its task expects."""


def _flatten(sample: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in sample.items():
        if not name or NESTING in name or name.startswith("__"):
            raise ValueError(f"sample field {prefix + name!r} cannot be stored: names must be non-empty, "
                             f"without {NESTING!r}, and not start with '__'")
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{name}{NESTING}"))
        else:
            flat[prefix + name] = value
    return flat


def encode_fields(sample: Mapping[str, Any], dtypes: Mapping[str, str | None]) -> dict[str, bytes]:
    """Sample dict -> {"<field>.npy": bytes}; fields named in `dtypes` with a dtype are stored as that dtype."""
    files: dict[str, bytes] = {}
    for name, value in _flatten(sample).items():
        if isinstance(value, torch.Tensor):
            array = value.detach().cpu().numpy()
        elif isinstance(value, (np.ndarray, np.generic, int, float, bool)):
            array = np.asarray(value)
        else:
            raise ValueError(f"sample field {name!r} is a {type(value).__name__}; the default shard codec stores "
                             "tensors, arrays and numbers only (define encode_sample on the task for other types)")
        stored = dtypes.get(name)
        if stored is not None:
            cast = array.astype(stored)
            if not np.array_equal(cast.astype(array.dtype), array):  # never store a silently changed value
                raise ValueError(f"sample field {name!r} ({array.dtype}) does not fit the declared shard dtype {stored}")
            array = cast
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        files[f"{name}.npy"] = buffer.getvalue()
    return files


def _widen(array: np.ndarray) -> np.ndarray:
    """A compactly stored field back to the dtype models take: integers int64, floats float32."""
    if array.dtype == np.bool_:
        return array
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    return array


def decode_fields(files: Mapping[str, Any], dtypes: Mapping[str, str | None]) -> dict[str, Any]:
    """Record {"<field>.npy": bytes, "__key__": ..., ...} -> sample dict of tensors; raises CorruptSample."""
    sample: dict[str, Any] = {}
    for name, data in files.items():
        if name.startswith("__"):  # webdataset's bookkeeping: __key__, __url__
            continue
        if not name.endswith(".npy"):
            raise CorruptSample(f"unexpected file {name!r} in record (the default shard codec writes .npy only)")
        field = name[: -len(".npy")]
        try:
            array = load_npy(data)
        except Exception as error:
            raise CorruptSample(f"field {field!r} does not decode: {error}") from None
        if dtypes.get(field) is not None:
            array = _widen(array)
        *parents, leaf = field.split(NESTING)
        target = sample
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = torch.from_numpy(array if array.flags.writeable else array.copy())
    missing = [name for name in dtypes if _lookup(sample, name) is None]
    if missing:
        raise CorruptSample(f"record lacks field(s) {', '.join(missing)}")
    return sample


@functools.lru_cache(maxsize=256)
def _npy_header(prefix: bytes) -> tuple[int, np.dtype, tuple[int, ...], bool]:
    """(data offset, dtype, shape, fortran order) of a .npy header. Cached: a field's header repeats in
    every record, and parsing it (`np.load`) costs more than reading the data."""
    stream = io.BytesIO(prefix)
    version = np.lib.format.read_magic(stream)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(stream)
    if dtype.hasobject:
        raise ValueError("object arrays are not stored")
    return stream.tell(), dtype, shape, fortran


def load_npy(data: bytes) -> np.ndarray:
    """`np.load` of one in-memory .npy file, fast for repeated headers; the byte count must match the header."""
    if data[:6] != b"\x93NUMPY":
        raise ValueError("not a .npy file")
    header_len = int.from_bytes(data[8:10], "little") if data[6] == 1 else int.from_bytes(data[8:12], "little")
    offset, dtype, shape, fortran = _npy_header(bytes(data[: (10 if data[6] == 1 else 12) + header_len]))
    count = int(np.prod(shape))
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError(f"{len(data) - offset} data bytes for shape {shape} of {dtype} ({count * dtype.itemsize} expected)")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return (array.reshape(shape[::-1]).T if fortran else array.reshape(shape)).copy()


def _lookup(sample: Mapping[str, Any], field: str) -> Any:
    value: Any = sample
    for part in field.split(NESTING):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def encoder_for(task: Any) -> Callable[[Mapping[str, Any]], dict[str, bytes]]:
    """One sample -> the files of its record, by the task's own `encode_sample` or its `shard_fields`."""
    own = getattr(task, "encode_sample", None)
    return own if own is not None else functools.partial(encode_fields, dtypes=task.shard_fields)


def decoder_for(task: Any) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """A record's files -> the sample (raising for a record it cannot trust). A function of the task only,
    so DataLoader workers can take it without the rest of the run."""
    own = getattr(task, "decode_sample", None)
    return own if own is not None else functools.partial(decode_fields, dtypes=task.shard_fields)
