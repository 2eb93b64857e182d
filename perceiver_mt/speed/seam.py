"""The speed seam: faster ways to compute the reference model, applied to a built model in one place.

`perceiver_mt/model/` is the reference Perceiver IO. `apply_speedups` changes the class of some of its
modules to subclasses (here in `perceiver_mt/speed/`) that have the same parameters, so the same state_dict
keys, and compute the same function faster or in less memory. As `parallel.parallelize` does for scaling,
it applies them in a fixed order, each step logging one line:

    1. attention     every MultiHeadAttention -> FastAttention (projection order, kernel choice, head padding) and every
                     CrossAttentionLayer -> FastCrossAttentionLayer (keys/values prepared once, GridTokens)
    2. grid tokens   every ConcatFourierPositions -> GridFourierPositions: tokens whose position features
                     stay one table per axis, attended without expanding them at inference
    3. input chunks  encoder cross-attentions walk their inputs `input_chunk_size` at a time (recomputed in backward)
    4. query chunks  decoders decode `query_chunk_size` queries at a time, each task's head inside each chunk

`MultiTaskSystem` applies it to every model it builds (training, `load_from_checkpoint`, `Predictor`), before
`parallelize` (activation checkpointing, compile, FSDP). `speed.enabled=false` leaves the reference model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from torch import nn

from perceiver_mt.model.attention import CrossAttentionLayer, MultiHeadAttention
from perceiver_mt.model.multitask import TaskModel
from perceiver_mt.model.perceiver import PerceiverDecoder, PerceiverEncoder
from perceiver_mt.model.position import ConcatFourierPositions
from perceiver_mt.speed.absorption import PROJECTED
from perceiver_mt.speed.attention import FastAttention
from perceiver_mt.speed.grid_tokens import GridFourierPositions
from perceiver_mt.speed.kernels import KERNELS
from perceiver_mt.speed.layers import ChunkedDecoder, ChunkedTaskModel, FastCrossAttentionLayer

PROJECTION_ORDERS = ("cheapest", "projected")
logger = logging.getLogger(__name__)
Log = Callable[[str], None]


@dataclass
class SpeedConfig:
    # false: the reference model exactly as perceiver_mt/model/ writes it, to check a speedup against
    enabled: bool = True
    # cheapest: each cross-attention multiplies its projections in the order with the fewest FLOPs for its
    # shapes (speed/absorption.py; same function) | projected: in the order of the reference and other libraries
    projection_order: str = "cheapest"
    # auto | fused | matmul, for every attention (task decoders too): "auto" picks per device and shape as
    # measured (speed/kernels.py); "fused" keeps SDPA everywhere (least memory); "matmul" two GEMMs and a softmax
    attention_kernel: str = "auto"
    # CUDA: where an attention runs on SDPA, zero channels bring its head widths to what the fused kernels take
    # (multiples of 8; one width up to 256 for flash), so 261- or 323-wide heads do not fall back to SDPA's
    # unfused math kernel (speed/kernels.py). Same function; no effect on CPU. Its GPU speed is not measured yet
    pad_heads: bool = True
    # ConcatFourierPositions tokens keep their position features per axis (GridTokens): per-pixel inference
    # multiplies only the content channels; training expands them once (or per checkpointed chunk)
    grid_tokens: bool = True
    # Cross-attend to this many input points at a time, each chunk's keys/values recomputed in backward:
    # training memory for one chunk's instead of all inputs'. For inputs of 100k+ points; null = all at once
    input_chunk_size: int | None = None
    # Decode this many queries at a time, each task's head run per chunk (so it must map queries one by one:
    # per pixel, per token); with parallel.activation_checkpointing each chunk is recomputed. null = all at once
    query_chunk_size: int | None = None


def check_config(config: SpeedConfig) -> None:
    """One-line ValueError for a value that is not allowed."""
    for key, value, allowed in (("projection_order", config.projection_order, PROJECTION_ORDERS),
                                ("attention_kernel", config.attention_kernel, KERNELS)):
        if value not in allowed:
            raise ValueError(f"speed.{key}={value!r} is unknown; choose one of {', '.join(allowed)}")
    for key in ("input_chunk_size", "query_chunk_size"):
        size = getattr(config, key)
        if size is not None and size < 1:
            raise ValueError(f"speed.{key} must be a positive number of points or null, got {size}")


def apply_speedups(model: nn.Module, config: SpeedConfig, log: Log = logger.info) -> nn.Module:
    """The speedups `config` switches on, applied to `model` in place (see the module docstring); returns it.

    Each step reports one line to `log` (the Lightning system passes its rank-zero logger).
    """
    check_config(config)
    if not config.enabled:
        log("Speedups off (speed.enabled=false): the reference model as written")
        return model
    apply_fast_attention(model, config.projection_order, config.attention_kernel, log, config.pad_heads)
    if config.grid_tokens:
        apply_grid_tokens(model, log)
    if config.input_chunk_size:
        apply_input_chunks(model, config.input_chunk_size, log)
    if config.query_chunk_size:
        apply_query_chunks(model, config.query_chunk_size, log)
    return model


def swap_modules(model: nn.Module, reference: type[nn.Module], variant: type[nn.Module], **settings: object) -> int:
    """Every module in `model` of exactly class `reference` (or already `variant`) becomes a `variant` with
    `settings` as attributes; returns how many.

    As FSDP2's `fully_shard` does, only the class changes: parameters, buffers and submodules stay where they
    are, so the state_dict keys do too. `variant` must be a subclass of `reference` that adds no parameters.
    """
    if not issubclass(variant, reference):
        raise TypeError(f"{variant.__name__} must subclass {reference.__name__} to replace it")
    count = 0
    for module in model.modules():
        if type(module) is reference or isinstance(module, variant):
            module.__class__ = variant
            for name, value in settings.items():
                setattr(module, name, value)
            count += 1
    return count


def apply_fast_attention(model: nn.Module, projection_order: str, kernel: str, log: Log = logger.info,
                         pad_heads: bool = True) -> None:
    plan = PROJECTED if projection_order == "projected" else None
    attentions = swap_modules(model, MultiHeadAttention, FastAttention, kernel=kernel, plan=plan, pad_heads=pad_heads)
    layers = swap_modules(model, CrossAttentionLayer, FastCrossAttentionLayer)
    log(f"Applied fast attention to {attentions} attentions ({layers} cross-attention layers): "
        f"projection order {projection_order}, kernel {kernel}{', heads padded for CUDA fused kernels' if pad_heads else ''}")


def apply_grid_tokens(model: nn.Module, log: Log = logger.info) -> None:
    count = swap_modules(model, ConcatFourierPositions, GridFourierPositions)
    log(f"Applied grid tokens to {count} Fourier-position concatenations")


def apply_input_chunks(model: nn.Module, size: int, log: Log = logger.info) -> None:
    layers = [layer for encoder in model.modules() if isinstance(encoder, PerceiverEncoder)
              for layer in encoder.cross_attentions]
    for layer in layers:
        if not isinstance(layer, FastCrossAttentionLayer):
            raise TypeError("input chunks need the fast cross-attention layers: apply fast attention first")
        layer.input_chunk_size = size
    log(f"Applied input chunks of {size} points to {len(layers)} encoder cross-attention layers")


def apply_query_chunks(model: nn.Module, size: int, log: Log = logger.info) -> None:
    decoders = swap_modules(model, PerceiverDecoder, ChunkedDecoder, query_chunk_size=size)
    swap_modules(model, TaskModel, ChunkedTaskModel)
    log(f"Applied query chunks of {size} to {decoders} decoders (each task's head runs per chunk)")
