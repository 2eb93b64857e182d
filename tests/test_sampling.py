"""Task sampling: frequencies per strategy, and the same choice on every rank without communication."""

from __future__ import annotations

import collections
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import free_port
from perceiver_mt.sampling import SamplingConfig, TaskSampler

SIZES = {"a": 100, "b": 400, "c": 1600}
STEPS = 20_000


def frequencies(config: SamplingConfig, seed: int = 0) -> dict[str, float]:
    sampler = TaskSampler(config, SIZES, seed)
    counts = collections.Counter(t for s in range(STEPS) for t in sampler.tasks_for_step(s))
    return {name: counts[name] / STEPS for name in SIZES}


@pytest.mark.parametrize("config,expected", [
    (SamplingConfig("uniform"), {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}),
    (SamplingConfig("proportional"), {"a": 100 / 2100, "b": 400 / 2100, "c": 1600 / 2100}),
    (SamplingConfig("temperature", temperature=2.0), {"a": 10 / 70, "b": 20 / 70, "c": 40 / 70}),
    (SamplingConfig("weights", weights={"a": 1, "b": 1, "c": 2}), {"a": 0.25, "b": 0.25, "c": 0.5}),
])
def test_random_strategies_follow_their_probabilities(config, expected):
    for name, frequency in frequencies(config).items():
        assert frequency == pytest.approx(expected[name], abs=0.015), name


def test_round_robin_cycles_in_sorted_order():
    sampler = TaskSampler(SamplingConfig("round_robin"), {"b": 1, "a": 1, "c": 1})
    assert [sampler.tasks_for_step(s)[0] for s in range(6)] == ["a", "b", "c", "a", "b", "c"]


def test_all_mode_trains_every_task_each_step():
    sampler = TaskSampler(SamplingConfig("all"), SIZES)
    assert sampler.tasks_for_step(0) == sampler.tasks_for_step(99) == ["a", "b", "c"]


def test_choice_depends_only_on_seed_and_step():
    config = SamplingConfig("proportional")
    first, second = TaskSampler(config, SIZES, seed=7), TaskSampler(config, SIZES, seed=7)
    forward = [first.tasks_for_step(s) for s in range(200)]
    backward = [second.tasks_for_step(s) for s in reversed(range(200))][::-1]  # order of queries is irrelevant
    assert forward == backward
    other_seed = TaskSampler(config, SIZES, seed=8)
    assert forward != [other_seed.tasks_for_step(s) for s in range(200)]


@pytest.mark.parametrize("config,message", [
    (SamplingConfig("bogus"), "choose one of round_robin"),
    (SamplingConfig("weights", weights={"a": 1}), "missing"),
    (SamplingConfig("temperature", temperature=0), "temperature must be > 0"),
])
def test_bad_sampling_configs_are_explained(config, message):
    with pytest.raises(ValueError, match=message):
        TaskSampler(config, SIZES)


def _choose_on_rank(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    sampler = TaskSampler(SamplingConfig("temperature"), SIZES, seed=3)
    names = sorted(SIZES)
    choices = torch.tensor([names.index(sampler.tasks_for_step(s)[0]) for s in range(500)])
    gathered = [torch.zeros_like(choices) for _ in range(world)]
    dist.all_gather(gathered, choices)
    if rank == 0:
        queue.put([g.tolist() for g in gathered])
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_every_rank_chooses_the_same_task_without_communicating():
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.spawn(_choose_on_rank, args=(2, free_port(), queue), nprocs=2, join=True)
    rank0, rank1 = queue.get()
    assert rank0 == rank1
    assert len(set(rank0)) == 3  # all tasks were chosen at some step: the comparison is not vacuous
