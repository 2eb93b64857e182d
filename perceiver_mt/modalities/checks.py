"""One-line errors for batches a task cannot take: the task's name, what it got, what it expects."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from perceiver_mt.task import TaskInputError

__all__ = ["TaskInputError", "check_tensor", "describe"]


def describe(value: Any) -> str:
    """A short description of a batch value for error messages: shape and dtype, or the keys of a dict."""
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in value.items()) + "}"
    return type(value).__name__


def check_tensor(task: str, what: str, value: Any, shape: Sequence[int | None], floating: bool | None = None) -> None:
    """TaskInputError unless `value` is a tensor of `shape` (None = any size there; dim 0 is the batch).

    `floating`: True = must be a float tensor, False = must be an integer tensor, None = either.
    """
    expected = "(" + ", ".join("B" if i == 0 and s is None else ("*" if s is None else str(s))
                               for i, s in enumerate(shape)) + ")"
    kind = {True: " floats", False: " integers", None: ""}[floating]
    ok = isinstance(value, torch.Tensor) and value.dim() == len(shape) and all(
        s is None or value.shape[i] == s for i, s in enumerate(shape))
    if ok and floating is not None:
        ok = value.is_floating_point() == floating
    if not ok:
        raise TaskInputError(f"task {task!r} takes {what} of shape {expected}{kind}, got {describe(value)}")
