"""Everything about scaling out, in one place: strategies, FSDP wrapping, activation checkpointing,
mixed precision, CPU offload, collective timeouts, and the two rules that make N ranks train exactly
like one process.

The transforms of a built model (`parallelize`: activation checkpointing, compile, FSDP2 per unit) live in
`perceiver_mt/parallelize.py`, which imports no Lightning, and are re-exported here; so is `ParallelConfig`.
This module adds what needs Lightning or a process group: the strategies (`build_strategy`, `FSDP2Strategy`),
sharded checkpoints, and the rules below, used by the Lightning system.

Data parallel "the same as one process" needs two things beyond averaging gradients:
  * DDP without `find_unused_parameters`: the idle tasks' parameters join the loss with weight zero so
    the reducer sees every parameter (`touch_idle_parameters`), and their gradients are dropped after
    backward (`release_idle_gradients`) so AdamW skips them exactly as it does in one process.
  * Losses averaged over tokens (masked bytes) differ in count between ranks; `weigh_across_ranks`
    scales each rank's loss by its share of the global count, so the averaged gradient is the gradient
    of the global mean.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, Strategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from perceiver_mt.errors import ConfigError
from perceiver_mt.outputs import replace_folder, staging_folder
from perceiver_mt.parallelize import (  # noqa: F401  (re-exported: the model transforms, without Lightning)
    CHECKPOINTS, COMPILES, DTYPES, SHARDINGS, ParallelConfig, apply_activation_checkpointing, apply_compile,
    apply_fsdp, inputs_in_float32, parallelize,
)

def check_config(config: ParallelConfig, strategy: Any, accelerator: Any) -> None:
    """One-line `ConfigError` for values that are unknown or do not apply to the chosen strategy."""
    for key, value, allowed in (("sharding", config.sharding, SHARDINGS), ("param_dtype", config.param_dtype, DTYPES),
                                ("reduce_dtype", config.reduce_dtype, DTYPES), ("checkpoint", config.checkpoint, CHECKPOINTS),
                                ("compile", config.compile, COMPILES)):
        if value not in allowed:
            raise ConfigError(f"parallel.{key}={value!r} is unknown; choose one of {', '.join(allowed)}")
    for key in ("timeout_s", "init_timeout_s"):
        if getattr(config, key) <= 0:
            raise ConfigError(f"parallel.{key} must be > 0 seconds, got {getattr(config, key)}")
    if config.checkpoint_every_n_steps < 0:
        raise ConfigError(f"parallel.checkpoint_every_n_steps={config.checkpoint_every_n_steps} is not allowed: a "
                          "number of steps >= 1, or 0 to save only at validation and at the end")
    if strategy != "fsdp":
        defaults = ParallelConfig()
        for key in ("sharding", "param_dtype", "reduce_dtype", "cpu_offload", "checkpoint"):
            if getattr(config, key) != getattr(defaults, key):
                raise ConfigError(f"parallel.{key} applies to trainer.strategy=fsdp only (got strategy={strategy!r})")
    if config.cpu_offload and accelerator == "cpu":
        raise ConfigError("parallel.cpu_offload needs trainer.accelerator=cuda: on cpu the parameters already live in CPU memory")


def build_strategy(strategy: Any, config: ParallelConfig, accelerator: Any = "auto") -> Any:
    """`trainer.strategy` as configured  ->  what Lightning's Trainer gets.

    "ddp" and "fsdp" become strategy objects (gloo on cpu, nccl on cuda: Lightning picks) whose process
    group starts with `init_timeout_s`; `CollectiveTimeout` tightens it to `timeout_s` after the first
    step. Anything else (auto, ddp_spawn, a Strategy object) passes through.
    """
    check_config(config, strategy, accelerator)
    timeout = timedelta(seconds=config.init_timeout_s)
    if strategy == "ddp":
        # find_unused_parameters stays off: idle tasks are handled by touch_idle_parameters.
        return DDPStrategy(timeout=timeout, find_unused_parameters=False)
    if strategy == "fsdp":
        return FSDP2Strategy(config)
    return strategy


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 (`fully_shard`) applied in `configure_model`, on cpu (gloo) and cuda (nccl).

    Why not Lightning's `FSDPStrategy`: its accelerator connector refuses any accelerator but CUDA by an
    exact-type check, though PyTorch's FSDP runs on CPU with gloo. `ModelParallelStrategy` has no such
    check and leaves the wrapping to `configure_model`, which is where `parallelize` belongs anyway. This
    subclass only fixes its mesh to pure data parallelism (no tensor parallelism), adds a hybrid mesh,
    and keeps CPU-offloaded parameters where FSDP put them.
    """

    def __init__(self, config: ParallelConfig):
        super().__init__(save_distributed_checkpoint=config.checkpoint == "sharded",
                         timeout=timedelta(seconds=config.init_timeout_s))
        self.config = config
        self.fsdp_mesh: Any = None

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # every rank holds a data shard
        self._tensor_parallel_size = 1
        super().setup_environment()
        if self.config.sharding == "hybrid":
            from torch.distributed.device_mesh import init_device_mesh

            self.fsdp_mesh = init_device_mesh(self.root_device.type, (self.num_nodes, self.num_processes),
                                              mesh_dim_names=("replicate", "shard"))
        else:
            self.fsdp_mesh = self.device_mesh["data_parallel"]

    def model_to_device(self) -> None:
        if not self.config.cpu_offload:  # offloaded shards must stay in CPU memory; FSDP moves them per use
            super().model_to_device()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """A sharded checkpoint is written to a staging folder beside the target and takes its place once
        every rank has written its part: a kill mid-write leaves the previous checkpoint whole (outputs.py).
        A full checkpoint goes through the atomic checkpoint writer like any other file."""
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        target = Path(self.broadcast(str(filepath)))
        staged = staging_folder(target)
        if self.global_rank == 0 and staged.exists():
            shutil.rmtree(staged)  # left by a writer killed before it finished
        self.barrier()
        super().save_checkpoint(checkpoint, staged, storage_options)
        self.barrier()
        if self.global_rank == 0:
            replace_folder(staged, target)
        self.barrier()


def fsdp_mesh(strategy: Strategy) -> Any:
    """The mesh to shard over, or None when the strategy does not shard."""
    return getattr(strategy, "fsdp_mesh", None)


def consolidate_checkpoint(folder: str | Path, output: str | Path) -> Path:
    """A sharded checkpoint folder  ->  one file that `MultiTaskSystem.load_from_checkpoint` reads in a
    single process: the full weights and the run's metadata (hyperparameters, step). The optimizer
    state stays behind: sharded optimizer state only serves resuming the sharded run itself."""
    from lightning.fabric.utilities.load import _METADATA_FILENAME
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    folder, output = Path(folder), Path(output)
    if not (folder / ".metadata").is_file():
        raise ValueError(f"{str(folder)!r} is not a sharded checkpoint folder (it has no .metadata file)")
    with tempfile.TemporaryDirectory() as scratch:
        dcp_to_torch_save(folder, Path(scratch) / "state.pt")
        state = torch.load(Path(scratch) / "state.pt", map_location="cpu", weights_only=False)
    checkpoint = torch.load(folder / _METADATA_FILENAME, map_location="cpu", weights_only=False)
    checkpoint["state_dict"] = state["state_dict"]
    torch.save(checkpoint, output)
    return output


# --- DDP: every parameter in every step, without find_unused_parameters ----------------------------------------

def touches_every_parameter(strategy: Strategy) -> bool:
    """DDP's reducer needs a gradient for every parameter in every step; FSDP2 units need nothing."""
    return isinstance(strategy, DDPStrategy)


def idle_parameters(model: nn.Module, tasks: Iterable[str]) -> list[nn.Parameter]:
    """Parameters of the task modules that do not train this step."""
    training = set(tasks)
    return [p for name, task_model in model.tasks.items() if name not in training
            for p in task_model.parameters() if p.requires_grad]


def touch_idle_parameters(parameters: list[nn.Parameter]) -> torch.Tensor:
    """Zero, with every given parameter in its graph: DDP then reduces (zero) gradients for all of them."""
    if not parameters:
        return torch.zeros(())
    return 0.0 * sum(p.sum() for p in parameters)


def release_idle_gradients(parameters: list[nn.Parameter]) -> None:
    """Back to no gradient: AdamW then skips them (no moment decay, no weight decay), as in one process."""
    for p in parameters:
        p.grad = None


# --- losses: ranks weighted by how much of the global batch they hold -------------------------------------------

def weigh_across_ranks(loss: torch.Tensor, count: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(loss to backpropagate, loss of the global batch, global count) for a loss that is a mean over
    `count` terms on this rank.

    Data parallel averages gradients over ranks; scaling rank r's loss by count_r * world / sum(count)
    makes that average the gradient of the mean over all ranks' terms. One all-reduce of two numbers.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return loss, loss.detach(), int(count)
    count = torch.as_tensor(count, dtype=torch.float64, device=loss.device)
    totals = torch.stack([loss.detach().double() * count, count])
    dist.all_reduce(totals)
    global_loss = (totals[0] / totals[1]).to(loss.dtype)
    scale = (count * dist.get_world_size() / totals[1]).to(loss.dtype)
    return loss * scale, global_loss, int(totals[1])


def release_process_group() -> None:
    """End the job's process group once every rank is done with it.

    Left to interpreter exit, the group's threads can be torn down out of order and abort a rank that
    finished all its work ("terminate called without an active exception", exit -6).
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# --- faults ----------------------------------------------------------------------------------------------------

COLLECTIVE_FAILURE_HINTS = ("gloo", "nccl", "timed out", "timeout", "connection closed", "connection reset",
                            "broken pipe", "socket")


class CollectiveTimeout(Callback):
    """Bounds every collective by `parallel.timeout_s` from the second step on, and says in one line why a
    distributed job failed, on the rank that saw it, before the traceback.

    Start-up (ranks joining, data set-up, the first step) runs under `init_timeout_s` instead, so a short
    timeout for a hung rank does not fail a slow start. As in torchtitan, all ranks meet at a barrier
    before the switch: no fast rank may run a collective under the short timeout while a slow one is
    still legitimately busy under the long one. `_set_pg_timeout` is private but the one way to change
    a live process group's timeout.
    """

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.applied = False

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.applied or not (dist.is_available() and dist.is_initialized()):
            return
        self.applied = True
        from torch.distributed.distributed_c10d import _set_pg_timeout

        dist.barrier()
        mesh = fsdp_mesh(trainer.strategy)
        groups = [None, *(mesh.get_all_groups() if mesh is not None else [])]  # None: the default group
        for group in groups:
            _set_pg_timeout(timedelta(seconds=self.timeout_s), group)
        rank_zero_info(f"Collective timeout set to {self.timeout_s:g}s (parallel.timeout_s)")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        text = str(exception)
        is_collective = isinstance(exception, dist.DistError) or any(h in text.lower() for h in COLLECTIVE_FAILURE_HINTS)
        if trainer.world_size > 1 and is_collective:
            first_line = text.strip().splitlines()[0] if text.strip() else type(exception).__name__
            bound = f"parallel.timeout_s={self.timeout_s:g}s" if self.applied else "parallel.init_timeout_s"
            print(f"error: rank {trainer.global_rank}/{trainer.world_size}: a collective failed: another rank "
                  f"died or did not answer within {bound} ({first_line[:300]})", file=sys.stderr, flush=True)
        # Lightning ends the ranks it started only on Ctrl+C; after any other failure of this process a
        # hung rank would outlive the job. (A failing child is seen by Lightning's own observer, and
        # under torchrun the agent ends the others.)
        launcher = getattr(trainer.strategy, "launcher", None)
        if isinstance(launcher, _SubprocessScriptLauncher):
            launcher.kill(signal.SIGKILL)
