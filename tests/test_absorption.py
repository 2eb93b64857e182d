"""Cross-attention in every projection order (the speed layer's FastAttention): the same function and gradients
as the reference attention, and the cheapest order chosen."""

from __future__ import annotations

import itertools

import pytest
import torch

from perceiver_mt.model import DecoderConfig, PerceiverDecoder
from perceiver_mt.model.attention import MultiHeadAttention
from perceiver_mt.speed import SpeedConfig, apply_speedups, swap_modules
from perceiver_mt.speed.absorption import PROJECTED, SCORE_ORDERS, VALUE_ORDERS, AttentionPlan, attention_plan
from perceiver_mt.speed.attention import FastAttention
from helpers import reference_attention

PLANS = [AttentionPlan(s, v) for s, v in itertools.product(SCORE_ORDERS, VALUE_ORDERS)]


def fast(attention: MultiHeadAttention, plan: AttentionPlan | None = None, kernel: str = "auto") -> FastAttention:
    swap_modules(attention, MultiHeadAttention, FastAttention, plan=plan, kernel=kernel)
    return attention


def outputs_and_gradients(attention, run, x_q, x_kv):
    out = run(x_q, x_kv)
    inputs = [x_q, x_kv, *attention.parameters()]  # every parameter gets a gradient (DDP needs them all)
    return out, torch.autograd.grad(out.square().sum(), inputs)


@pytest.mark.parametrize("kernel", ["fused", "matmul"])
@pytest.mark.parametrize("num_heads", [1, 3])
@pytest.mark.parametrize("plan", PLANS, ids=lambda p: f"{p.scores}-{p.values}")
def test_every_projection_order_is_the_same_attention(plan, num_heads, kernel):
    torch.manual_seed(0)
    attention = MultiHeadAttention(q_channels=5, kv_channels=4, num_heads=num_heads, qk_channels=12,
                                   v_channels=18, out_channels=7).double()
    for p in attention.parameters():  # biases away from zero, so a dropped bias term would show
        torch.nn.init.normal_(p)
    x_q = torch.randn(2, 6, 5, dtype=torch.double, requires_grad=True)
    x_kv = torch.randn(2, 9, 4, dtype=torch.double, requires_grad=True)
    pad_mask = torch.tensor([[False] * 9, [False] * 5 + [True] * 4])

    expected, expected_grads = outputs_and_gradients(
        attention, lambda q, kv: reference_attention(attention, q, kv, pad_mask), x_q, x_kv)
    plain, plain_grads = outputs_and_gradients(attention, lambda q, kv: attention(q, kv, pad_mask), x_q, x_kv)
    fast(attention, plan, kernel)
    got, got_grads = outputs_and_gradients(attention, lambda q, kv: attention(q, kv, pad_mask), x_q, x_kv)
    chunked, chunked_grads = outputs_and_gradients(
        attention, lambda q, kv: attention.forward_in_chunks(q, kv, torch.nn.Identity(), 4, pad_mask), x_q, x_kv)
    torch.testing.assert_close(plain, expected)  # the reference path itself
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(chunked, expected)
    names = ["x_q", "x_kv", *dict(attention.named_parameters())]
    for name, p, g, c, e in zip(names, plain_grads, got_grads, chunked_grads, expected_grads):
        torch.testing.assert_close(p, e, msg=name)
        torch.testing.assert_close(g, e, msg=name)
        torch.testing.assert_close(c, e, msg=name)


def test_every_order_runs_under_bf16_autocast_like_the_projected_one():
    torch.manual_seed(0)
    attention = MultiHeadAttention(q_channels=5, kv_channels=4, qk_channels=12, v_channels=18, out_channels=7)
    x_q, x_kv = torch.randn(2, 64, 5), torch.randn(2, 9, 4)
    expected = attention(x_q, x_kv)
    fast(attention)
    for plan in PLANS:
        attention.plan = plan
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = attention(x_q, x_kv)
        assert got.dtype == torch.bfloat16, plan
        torch.testing.assert_close(got.float(), expected, atol=0.05, rtol=0.05, msg=str(plan))


def test_the_cheapest_order_is_chosen_where_it_saves_flops():
    # DeepMind's optical flow network: 182,528 pixels of 322 channels, 2,048 latents of 512
    encoder_cross = attention_plan(2048, 182_528, 512, 322, 322, 322, 512, heads=1)
    assert encoder_cross == AttentionPlan("absorb_keys", "absorb_values")  # the inputs' k and v are never made
    decoder = attention_plan(182_528, 2048, 322, 512, 512, 512, 322, heads=1)
    assert decoder == AttentionPlan("absorb_queries", "absorb_outputs")  # 323-wide heads instead of 512
    # one classification query reading 256 latents: projecting it beats projecting every latent
    assert attention_plan(1, 256, 512, 512, 512, 512, 512, heads=1) == AttentionPlan("absorb_keys", "absorb_values")
    # as many queries as keys at equal widths: nothing to gain
    assert attention_plan(256, 256, 512, 512, 512, 512, 512, heads=1) == PROJECTED
    # several heads each work in the absorbed width: projecting is cheaper at equal widths
    assert attention_plan(2048, 182_528, 512, 322, 322, 322, 512, heads=4) == PROJECTED
    # inputs of a few channels (point coordinates) still gain with several heads
    assert attention_plan(256, 50_000, 512, 3, 512, 512, 512, heads=8) == AttentionPlan("absorb_keys", "absorb_values")


def test_attention_dropout_keeps_the_projected_order_while_training():
    attention = fast(MultiHeadAttention(q_channels=8, kv_channels=2, qk_channels=32, dropout=0.1))
    assert attention.plan_for(16, 1000) == PROJECTED  # dropped probabilities do not sum to one
    assert attention.eval().plan_for(16, 1000) == AttentionPlan("absorb_keys", "absorb_values")


def test_chunked_decoding_prepares_keys_and_values_once():
    torch.manual_seed(0)
    decoder = PerceiverDecoder(DecoderConfig(query_channels=3, qk_channels=32, v_channels=32, query_residual=False),
                               latent_channels=32)
    whole = PerceiverDecoder(DecoderConfig(query_channels=3, qk_channels=32, v_channels=32, query_residual=False), 32)
    whole.load_state_dict(decoder.state_dict())
    apply_speedups(decoder, SpeedConfig(query_chunk_size=5))
    queries, latents = torch.randn(2, 23, 3), torch.randn(2, 4, 32)
    attention, calls = decoder.cross_attention.attention, []
    prepare = attention.keys_values
    attention.keys_values = lambda *args: calls.append(args[1]) or prepare(*args)
    torch.testing.assert_close(decoder(queries, latents), whole(queries, latents))
    assert calls == [23]  # once, for all 23 queries, not once per chunk of 5
    assert attention.plan_for(23, 4) == AttentionPlan("absorb_queries", "absorb_outputs")


def graph_names(tensor: torch.Tensor) -> set[str]:
    names, stack, seen = set(), [tensor.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(fn.name())
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return names


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: f"{p.scores}-{p.values}")
def test_every_order_keeps_cpu_flash_attention(plan):
    """CPU flash attention needs equal q/k and v widths (else scores are materialised); orders change widths."""
    attention = fast(MultiHeadAttention(q_channels=5, kv_channels=4, qk_channels=12, v_channels=18, out_channels=7),
                     plan)
    out = attention(torch.randn(2, 64, 5, requires_grad=True), torch.randn(2, 9, 4))
    assert "ScaledDotProductFlashAttentionForCpuBackward0" in graph_names(out)
