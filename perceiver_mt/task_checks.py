"""One-line errors naming the task when its parts hand the shared network tensors of the wrong width.

Without them a wrong adapter width surfaces deep inside the encoder's attention as a long traceback
that never says which task built the tokens. Forward hooks on each task's adapter and query module
check the width as they return, so the model code stays as it is.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import nn

from perceiver_mt.task import TaskInputError


def _check_width(task: str, part: str, expected: int, where: str, module: nn.Module, args: Any, output: Any) -> None:
    tokens = output[0] if isinstance(output, tuple) else output
    shape = getattr(tokens, "shape", None)
    if shape is None or len(shape) != 3 or shape[-1] != expected:
        got = tuple(shape) if shape is not None else type(tokens).__name__
        raise TaskInputError(f"task {task!r}: its {part} returned {got}; {where} takes (B, M, {expected})")


def install_width_checks(task_models: nn.ModuleDict, input_channels: int) -> None:
    """Hooks on every task's adapter (-> model.input_channels) and queries (-> its decoder's query_channels)."""
    for name, task_model in task_models.items():
        task_model.adapter.register_forward_hook(partial(
            _check_width, name, "adapter", input_channels, "the shared encoder (model.input_channels)"))
        query_channels = task_model.decoder.config.query_channels
        task_model.queries.register_forward_hook(partial(
            _check_width, name, "query module", query_channels, "its decoder (DecoderConfig.query_channels)"))
