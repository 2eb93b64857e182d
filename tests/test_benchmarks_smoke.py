"""The benchmark harness measures what it claims: same-sized networks, the right FLOP count, a working
memory watchdog; and the model's memory options (checkpointing, chunked decoding) leave results unchanged."""

from __future__ import annotations

import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from helpers import REPO

sys.path.insert(0, str(REPO))  # benchmarks/ is a folder of scripts, not an installed package

from benchmarks.configs import CONFIGS  # noqa: E402
from benchmarks.flops import forward_flops  # noqa: E402
from benchmarks.implementations import build, make_inputs  # noqa: E402
from benchmarks.measure import measure_in_child, measure_in_process  # noqa: E402


def available(implementation: str) -> bool:
    module = {"hf": "transformers", "krasserm": "perceiver", "lucidrains": "perceiver_pytorch"}.get(implementation)
    if module is None:
        return True
    try:
        __import__(module)
        return True
    except ImportError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("implementation", ["hf", "krasserm", "lucidrains"])
def test_config_a_has_the_same_size_in_every_implementation(implementation):
    if not available(implementation):
        pytest.skip(f"{implementation} is a benchmark-only dependency (benchmarks/requirements.txt)")
    ours = build("ours", CONFIGS["A"]).parameters()
    theirs = build(implementation, CONFIGS["A"]).parameters()
    assert abs(theirs - ours) / ours <= 0.03, (implementation, theirs, ours)
    if implementation != "lucidrains":  # the others follow the config layer for layer
        assert theirs == ours


@pytest.mark.slow
@pytest.mark.parametrize("config", ["tinyA", "tinyC"])
def test_flop_formula_matches_counted_matmuls(config):
    """The nominal count is what the projected order executes; the absorbed count what ours executes."""
    c = CONFIGS[config]
    x, _ = make_inputs(c)
    counted = {}
    for variant in ("ours", "ours+projected"):
        bench = build(variant, c)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:  # math SDPA = countable bmm
            bench.run(x)
        counted[variant] = counter.get_total_flops()
    assert counted["ours+projected"] == forward_flops(c)
    assert counted["ours"] == forward_flops(c, absorbed=True) < forward_flops(c)

@pytest.mark.slow

def test_memory_options_do_not_change_outputs_or_gradients():
    """Config C as the benchmark builds it, plain and with the memory options on: activation checkpointing
    (parallel.py), chunks of inputs and of queries with the head per chunk (speed.*_chunk_size)."""
    from benchmarks.flow import build_flow_model, flow
    from perceiver_mt.parallelize import ParallelConfig, parallelize
    from perceiver_mt.speed import SpeedConfig, apply_speedups

    c = CONFIGS["tinyC"]
    frames, target = make_inputs(c)
    results = []
    # tinyC has 192 pixels: 4 chunks of queries (each through the head), 5 of inputs (the last one short)
    for speed, checkpointing in ((SpeedConfig(), False), (SpeedConfig(input_chunk_size=40, query_chunk_size=50), True)):
        torch.manual_seed(0)
        model = apply_speedups(build_flow_model(c), speed)
        parallelize(model, ParallelConfig(activation_checkpointing=checkpointing))
        output = flow(model, frames)
        ((output - target) ** 2).mean().backward()
        results.append((output.detach(), [p.grad for p in model.parameters()]))
    (plain, plain_grads), (lean, lean_grads) = results
    torch.testing.assert_close(lean, plain)
    for a, b in zip(lean_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_watchdog_records_oom_instead_of_letting_a_run_grow():
    result = measure_in_child(["--impl", "ours", "--config", "tinyA"], memory_limit_gb=0.05, timeout_s=120)
    assert result["status"] == "oom" and result["peak_rss_gb"] > 0.05

@pytest.mark.slow

def test_in_process_measurement_reports_results_and_failures_as_records():
    """The GPU path of the harness (one process for all measurements) on CPU: a variant of ours runs and an
    unknown implementation is a one-line error record, not an exception that ends the comparison."""
    ok = measure_in_process(["--impl", "ours+chunk+matmul", "--config", "tinyA", "--steps", "2", "--warmup", "0"])
    assert ok["status"] == "ok" and len(ok["times"]) == 2 and ok["params"] > 0
    bad = measure_in_process(["--impl", "ours+quantum", "--config", "tinyA"])
    assert bad["status"] == "error" and "unknown implementation 'ours+quantum'" in bad["error"]
    assert "\n" not in bad["error"]
