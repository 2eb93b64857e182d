"""FSDP2 on 2 CPU processes (gloo): the same training as 1 process, checkpoints full and sharded,
and a run killed mid-training that resumes from its sharded checkpoint as if never stopped."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

import distributed_helpers as runs
from helpers import REPO, free_port
from perceiver_mt.config import ConfigError
from perceiver_mt.parallel import ParallelConfig, build_strategy, consolidate_checkpoint, parallelize
from perceiver_mt.system import MultiTaskSystem
from distributed_helpers import assert_same_metrics, assert_same_outputs, assert_same_parameters, assert_same_training


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp_per_step_losses_match_one_process():
    assert_same_training(runs.fsdp(), runs.single_process())


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp_validation_metrics_match_one_process():
    assert_same_metrics(runs.fsdp(), runs.single_process())


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp_full_checkpoint_is_one_file_that_loads_in_one_process():
    fsdp = runs.fsdp()
    assert (fsdp.output_dir / "checkpoints" / "last.ckpt").is_file()
    assert_same_parameters(fsdp, runs.single_process())
    assert_same_outputs(fsdp, runs.single_process())


@pytest.mark.slow
@pytest.mark.distributed
def test_sharded_checkpoint_is_one_shard_per_rank():
    killed, _ = runs.fsdp_killed_then_resumed()
    folder = killed.output_dir / "checkpoints" / "last.ckpt"
    assert folder.is_dir()
    names = {p.name for p in folder.iterdir()}
    assert {"__0_0.distcp", "__1_0.distcp", "meta.pt", ".metadata"} <= names
    meta = torch.load(folder / "meta.pt", weights_only=False)
    assert meta["global_step"] == runs.STEPS  # the resumed run wrote it last, after step 12
    assert set(meta["MultiTaskDataModule"]["loaders"]) == {"digits", "pydoc_mlm"}


@pytest.mark.slow
@pytest.mark.distributed
def test_resume_from_sharded_checkpoint_continues_like_an_uninterrupted_run():
    killed, resumed = runs.fsdp_killed_then_resumed()
    assert killed.returncode != 0
    resumed.check()
    assert "Restored all states from the checkpoint" in resumed.output
    before = killed.losses("record_killed")
    assert sorted(before) == list(range(runs.KILL_STEP))  # steps 0..6 ran, the kill came at step 7's start
    after = resumed.losses()
    last_checkpoint = 6  # every 3 steps
    assert sorted(after) == list(range(last_checkpoint, runs.STEPS))
    uninterrupted = runs.fsdp().losses()
    # Same step, same tasks, same samples, same weights, optimizer moments and learning rate: the same
    # numbers, to the last bit on the same machine.
    for step, loss in after.items():
        assert loss == pytest.approx(uninterrupted[step], rel=1e-6, abs=0), f"step {step}"
    first = resumed.records(0)[0]
    original = runs.fsdp().records(0)[last_checkpoint]
    assert first["indices"] == original["indices"], "the resumed run did not continue where the data stood"


@pytest.mark.slow
@pytest.mark.distributed
def test_sharded_checkpoint_consolidates_into_one_file_for_one_process(tmp_path):
    killed, resumed = runs.fsdp_killed_then_resumed()
    resumed.check()
    single_file = consolidate_checkpoint(killed.output_dir / "checkpoints" / "last.ckpt", tmp_path / "model.ckpt")
    consolidated = runs.Run(tmp_path, 0, "", 0, 0)
    (tmp_path / "checkpoints").mkdir()
    single_file.rename(tmp_path / "checkpoints" / "last.ckpt")
    # The resumed run ended where the uninterrupted one did.
    assert_same_parameters(consolidated, runs.fsdp(), atol=1e-6)
    assert_same_outputs(consolidated, runs.fsdp())

@pytest.mark.slow

def test_parallelize_wraps_each_unit_once(debug_config):
    """One real 1-rank gloo group: every layer is one FSDP unit, shared layers included, applied twice
    (configure_model runs again for validate/test) without wrapping anything twice."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
    from torch.distributed.fsdp import FSDPModule

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        debug_config.model.num_blocks = 3  # the latent block runs 3 times with one set of weights
        debug_config.model.num_cross_attends = 3  # the second cross-attention is reused by the third
        model = MultiTaskSystem.from_config(debug_config).model
        plain_keys = set(model.state_dict())
        config = ParallelConfig(activation_checkpointing=True)
        mesh = init_device_mesh("cpu", (1,))
        parallelize(model, config, mesh)
        parallelize(model, config, mesh)
        encoder = model.encoder
        units = [encoder.cross_attentions[0], encoder.cross_attentions[1], *encoder.self_attentions, model]
        for task_model in model.tasks.values():
            units += [task_model, task_model.decoder]
        assert all(isinstance(unit, FSDPModule) for unit in units)
        assert sum(isinstance(m, FSDPModule) for m in model.modules()) == len(units)
        assert all(isinstance(layer, CheckpointWrapper) for layer in [*encoder.cross_attentions, *encoder.self_attentions])
        batch = {"inputs": torch.rand(4, 8, 8), "target": torch.arange(4), "index": torch.arange(4)}
        loss = model("digits", batch).logsumexp(-1).mean()
        loss.backward()  # each shared layer ran 3 times: gradients still reach its one sharded copy
        assert all(p.grad is not None for p in encoder.self_attentions[0].parameters())
        assert all(p.grad is None for p in model.tasks["pydoc_mlm"].parameters())  # idle task: no gradient
        assert set(model.state_dict()) == plain_keys  # checkpoints stay loadable without any wrapping
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("overrides, message", [
    ({"sharding": "zero3"}, "parallel.sharding='zero3' is unknown; choose one of full, grad_op, hybrid"),
    ({"param_dtype": "fp8"}, "parallel.param_dtype='fp8' is unknown"),
    ({"timeout_s": 0}, "parallel.timeout_s must be > 0"),
])
def test_bad_parallel_options_fail_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_strategy("fsdp", ParallelConfig(**overrides), "cpu")


def test_fsdp_only_options_are_refused_elsewhere():
    with pytest.raises(ConfigError, match="parallel.param_dtype applies to trainer.strategy=fsdp only"):
        build_strategy("ddp", ParallelConfig(param_dtype="bfloat16"), "cpu")
    with pytest.raises(ConfigError, match="parallel.cpu_offload needs trainer.accelerator=cuda"):
        build_strategy("fsdp", ParallelConfig(cpu_offload=True), "cpu")


def test_presets_name_only_what_they_change(tmp_path):
    from perceiver_mt.config import load_config

    default, ddp, fsdp = (load_config(REPO / "configs" / f"{name}.yaml") for name in ("default", "ddp", "fsdp"))
    assert (ddp.trainer["strategy"], ddp.trainer["devices"], fsdp.trainer["strategy"]) == ("ddp", 2, "fsdp")
    for task in default.tasks:  # two ranks of half the batch: the same global batch as default.yaml
        assert 2 * ddp.tasks[task].data["batch_size"] == default.tasks[task].data["batch_size"]
        assert fsdp.tasks[task].options == default.tasks[task].options
    assert fsdp.model == default.model and fsdp.parallel.checkpoint == "sharded"
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "loop.yaml")
