"""DDP on 2 CPU processes (gloo) trains exactly like 1 process with the same global batch.

The reference run uses twice the per-rank batch size. That gives the same global batches: the
DistributedSampler draws one permutation per (seed, epoch) whatever the world size and deals it out
rank by rank (rank r takes positions r, r+w, ...), so two ranks' batches j together are exactly the
single process's batch j; byte masks are seeded by (seed, epoch, sample id), not by rank. The test
checks that claim on the recorded sample ids rather than trusting it.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

import distributed_helpers as runs
from distributed_helpers import assert_same_metrics, assert_same_outputs, assert_same_parameters, assert_same_training
from perceiver_mt.data import EvalShardBatchSampler
from perceiver_mt.system import MultiTaskSystem

@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_per_step_losses_match_one_process():
    assert_same_training(runs.ddp(), runs.single_process())


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_final_model_matches_one_process():
    # Also proves idle tasks are skipped as in one process: a zero gradient left in place instead of None
    # would let AdamW move the idle decoder (momentum, weight decay) by ~lr per step.
    assert_same_parameters(runs.ddp(), runs.single_process())
    assert_same_outputs(runs.ddp(), runs.single_process())


@pytest.mark.slow
@pytest.mark.distributed
def test_ranks_see_disjoint_samples_that_make_up_the_global_batch():
    ddp, single = runs.ddp(), runs.single_process()
    ranks = [ddp.records(0), ddp.records(1)]
    seen: list[set[tuple[str, int]]] = [set(), set()]
    for rank0, rank1, reference in zip(*ranks, single.records(0)):
        assert rank0["step"] == rank1["step"] == reference["step"]
        assert rank0["tasks"] == rank1["tasks"] == reference["tasks"]  # same task on every rank
        for task in reference["tasks"]:
            ids0, ids1 = rank0["indices"][task], rank1["indices"][task]
            assert len(ids0) == len(ids1) == len(reference["indices"][task]) // 2
            assert sorted(ids0 + ids1) == sorted(reference["indices"][task])
        for rank, row in enumerate((rank0, rank1)):
            seen[rank] |= {(task, i) for task, ids in row["indices"].items() for i in ids}
    assert len(ranks[0]) == runs.STEPS
    assert not seen[0] & seen[1], "a sample was trained on by both ranks"


@pytest.mark.slow
@pytest.mark.distributed
def test_validation_metrics_are_reduced_over_all_samples_not_averaged_per_rank():
    assert_same_metrics(runs.ddp(), runs.single_process())


@pytest.mark.slow
@pytest.mark.parametrize("task", ["digits", "pydoc_mlm"])
def test_each_task_datamodule_shards_a_whole_epoch_by_rank(debug_config, task):
    """Over a full pass: training shares are disjoint and equal; evaluation covers every sample once in
    the same number of batches on every rank (FSDP's evaluation forward is a collective)."""
    from perceiver_mt.run import build_datamodule

    world = 3  # odd, so shares cannot split evenly by accident
    datamodule = build_datamodule(debug_config, MultiTaskSystem.from_config(debug_config)).datamodules[task]
    datamodule.setup("fit")
    shares, evaluated, batch_counts = [], [], set()
    for rank in range(world):
        datamodule.trainer = SimpleNamespace(global_rank=rank, world_size=world)  # what the loaders read
        shares.append([i for batch in datamodule.train_dataloader() for i in batch["index"].tolist()])
        val = datamodule.val_dataloader()
        batch_counts.add(len(val))
        evaluated += [i for batch in val for i in batch["index"].tolist()]
    size = len(datamodule.datasets["train"])
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) >= size // world - datamodule.batch_size
    assert sum(len(set(s)) for s in shares) == len(set().union(*shares)) == world * len(shares[0])
    assert sorted(evaluated) == sorted(datamodule.datasets["val"][i]["index"].item() for i in range(len(datamodule.datasets["val"])))
    assert len(batch_counts) == 1


def test_eval_batches_are_equal_in_number_and_cover_every_index_once():
    for n, world, batch in [(270, 2, 16), (17, 4, 4), (5, 2, 8), (100, 3, 2), (99, 3, 1)]:
        samplers = [EvalShardBatchSampler(n, r, world, batch) for r in range(world)]
        assert len({len(s) for s in samplers}) == 1
        assert sorted(i for s in samplers for b in s for i in b) == list(range(n))
        assert all(0 < len(b) <= batch for s in samplers for b in s)
        assert len(samplers[0]) == math.ceil(math.ceil(n / world) / batch)
    with pytest.raises(ValueError, match="cannot fill"):  # 34 batches of one on rank 0, 33 samples on rank 1
        EvalShardBatchSampler(100, 1, 3, 1)
