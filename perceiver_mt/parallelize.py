"""Scaling transforms of a built model, applied in one place: activation checkpointing, compile, FSDP2.

The model (`perceiver_mt.model`, with the speedups of `perceiver_mt.speed` already applied) is written for
one device. As torchtitan's `parallelize`, `parallelize` applies, in a fixed order, activation checkpointing,
`torch.compile` and then FSDP2 (`fully_shard`) per unit, each through a small `apply_*` helper that logs one
line. The units:

    every encoder cross-attention layer   (the second one is reused by all later cross-attends)
    every latent self-attention layer     (applied `num_blocks` times with shared weights: wrapped once)
    every task's decoder, then the task's whole `TaskModel` (adapter, queries, head)
    the root `MultiTaskPerceiver`         (the learned latent array)

A unit whose task does not train at a step (same choice on every rank, see `sampling.py`) runs no
forward, so no rank all-gathers or reduce-scatters it and its gradients stay None, as in one process.

This module imports no Lightning, so a bare training loop or a benchmark can apply the same transforms
without loading it (~0.1 GB of resident memory). `perceiver_mt.parallel` (strategies, callbacks, the rules
that make N ranks train like one process) re-exports everything here; its `ParallelConfig` is this one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from perceiver_mt.speed.layers import ChunkedDecoder

SHARDINGS = ("full", "grad_op", "hybrid")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CHECKPOINTS = ("sharded", "full")
COMPILES = ("none", "latent_layers", "encoder")


@dataclass
class ParallelConfig:
    # A dead or hung rank fails the job once a collective has waited this long. Low = fast failure, but a
    # legitimately slow phase (rank 0 writing a full checkpoint while the others wait) must fit in it.
    timeout_s: float = 600.0
    init_timeout_s: float = 600.0  # the same bound for start-up: every rank joining, and the first step
    activation_checkpointing: bool = False  # recompute each layer's activations in backward: less memory, ~1/3 more compute
    # torch.compile: none | latent_layers (each latent self-attention layer: fixed shapes, reused num_blocks
    # times) | encoder (the whole encoder's forward, one graph per input shape). A GPU option: on CPU the
    # first step pays minutes of compilation and measured no gain (docs/benchmarks.md).
    compile: str = "none"
    # The rest applies to trainer.strategy=fsdp only.
    sharding: str = "full"  # full: params resharded after forward (least memory) | grad_op: kept to backward (less traffic) | hybrid: shard within a node, replicate across nodes
    param_dtype: str = "float32"  # float32 | bfloat16: dtype the layers compute in (all-gathered params)
    reduce_dtype: str = "float32"  # float32 | bfloat16: dtype gradients are reduced in (bfloat16 halves traffic, loses precision)
    cpu_offload: bool = False  # cuda only: sharded params, grads and optimizer state live in CPU memory
    checkpoint: str = "sharded"  # sharded: a folder, one file per rank, no gather | full: one file gathered on rank 0
    # Faults: a killed run resumes (`ckpt_path=last`) from its last checkpoint, losing at most this many steps.
    checkpoint_every_n_steps: int = 0  # 0 = save last.ckpt only at validation and epoch end

logger = logging.getLogger(__name__)
Log = Callable[[str], None]


def parallelize(model: nn.Module, config: ParallelConfig, mesh: Any = None, log: Log = logger.info) -> nn.Module:
    """Activation checkpointing, compile, then FSDP over `mesh` (None: no sharding). Idempotent.

    Each step reports one line to `log` (the Lightning system passes its rank-zero logger)."""
    if getattr(model, "_parallelized", False):
        return model
    if config.activation_checkpointing:
        apply_activation_checkpointing(model, log)
    if config.compile != "none":
        apply_compile(model, config.compile, log)
    if mesh is not None:
        apply_fsdp(model, mesh, config, log)
    model._parallelized = True
    return model


def apply_activation_checkpointing(model: nn.Module, log: Log = logger.info) -> None:
    # The wrapper renames nothing in state dicts (it strips its own prefix), so checkpoints stay portable.
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    encoder = model.encoder
    for layers in (encoder.cross_attentions, encoder.self_attentions):
        for i, layer in enumerate(layers):
            layers[i] = checkpoint_wrapper(layer)
    for task_model in model.tasks.values():
        if isinstance(task_model.decoder, ChunkedDecoder):
            # One checkpoint per chunk of queries: wrapped whole, backward would recompute all chunks at once.
            task_model.decoder.checkpoint_chunks = True
        else:
            task_model.decoder = checkpoint_wrapper(task_model.decoder)
    log("Applied activation checkpointing to every encoder layer and task decoder")


def apply_compile(model: nn.Module, what: str, log: Log = logger.info) -> None:
    # Module.compile() compiles in place: parameter names, and so checkpoints, stay as they are.
    modules = list(model.encoder.self_attentions) if what == "latent_layers" else [model.encoder]
    for module in modules:
        module.compile()
    log(f"Applied torch.compile to {len(modules)} module(s) ({what})")


def apply_fsdp(model: nn.Module, mesh: Any, config: ParallelConfig, log: Log = logger.info) -> None:
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
    from torch.distributed.fsdp import register_fsdp_forward_method

    param_dtype, reduce_dtype = DTYPES[config.param_dtype], DTYPES[config.reduce_dtype]
    common = {
        "mesh": mesh,
        "reshard_after_forward": config.sharding != "grad_op",
        "offload_policy": CPUOffloadPolicy() if config.cpu_offload else OffloadPolicy(),
    }
    # Layers compute in param_dtype. Adapters, queries, heads and the root stay in float32: adapters mix
    # their inputs with fixed float32 buffers (position features) and heads feed the losses; so decoders
    # hand back float32 too.
    layer_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    decoder_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype, output_dtype=torch.float32)
    outer_policy = MixedPrecisionPolicy(reduce_dtype=reduce_dtype)
    encoder = model.encoder
    for layer in [*encoder.cross_attentions, *encoder.self_attentions]:
        fully_shard(layer, mp_policy=layer_policy, **common)
    for task_model in model.tasks.values():
        fully_shard(task_model.decoder, mp_policy=decoder_policy, **common)
        fully_shard(task_model, mp_policy=outer_policy, **common)
        # A chunked decoder runs the head inside its own forward, before its output is cast back.
        task_model.head.register_forward_pre_hook(inputs_in_float32)
        # The system calls these methods, not forward(); FSDP must all-gather around them too.
        register_fsdp_forward_method(task_model, "encode_inputs")
        register_fsdp_forward_method(task_model, "decode")
    fully_shard(model, mp_policy=outer_policy, **common)
    log(f"Applied FSDP to the model (sharding={config.sharding}, param_dtype={config.param_dtype}, "
        f"reduce_dtype={config.reduce_dtype}, cpu_offload={config.cpu_offload}, mesh={tuple(mesh.shape)})")


def inputs_in_float32(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
