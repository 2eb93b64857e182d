"""Matmul FLOPs of one forward pass of a benchmark config, counted from the architecture.

Only matrix products are counted (2 FLOPs per multiply-add): projections, the two attention products,
MLPs and heads. Norms, softmax and GELU are left out, as in the usual "model FLOPs" accounting, so the
same number serves every implementation and an implementation doing extra work gets no credit for it.
A training step is counted as 3x the forward (backward = 2x: gradients for inputs and for weights).

`absorbed=True` counts what this project's model executes on a CPU instead: its cross-attentions multiply
the projections in the cheapest order (perceiver_mt/speed/absorption.py), the same function in fewer FLOPs.
Throughput ratios and "share of the matmul peak" figures use the nominal count, the same for everyone.
Config C's inference forward executes less again (GridTokens: 0.63 TFLOP by `FlopCounterMode`, with the
parameters frozen so that it runs the inference path); this count does not model it.
"""

from __future__ import annotations

from benchmarks.configs import ClassifierConfig, FlowConfig
from perceiver_mt.speed.absorption import PROJECTED, attention_plan, order_costs


def linear(tokens: int, fan_in: int, fan_out: int) -> int:
    return 2 * tokens * fan_in * fan_out


def attention(queries: int, keys: int, q_in: int, kv_in: int, qk: int, v: int, out: int, absorbed: bool = False) -> int:
    """Projections plus QK^T and AV for one sample, one head (heads only split channels, they add no FLOPs),
    in the projected order or, with `absorbed`, in the order this project's model picks."""
    shapes = (queries, keys, q_in, kv_in, qk, v, out, 1)
    plan = attention_plan(*shapes) if absorbed else PROJECTED
    scores, values = order_costs(*shapes)
    # CPU flash attention needs equal q/k and v widths, so the narrower product is padded with zero channels
    score_width = {"project": qk, "absorb_keys": kv_in, "absorb_queries": q_in + 1}[plan.scores]
    value_width = {"project": v, "absorb_values": kv_in, "absorb_outputs": out}[plan.values]
    padding = queries * keys * abs(score_width - value_width)
    return 2 * (scores[plan.scores] + values[plan.values] + padding)


def mlp(tokens: int, channels: int, widening: int) -> int:
    return 2 * linear(tokens, channels, channels * widening)


def classifier_forward_flops(c: ClassifierConfig, absorbed: bool = False) -> int:
    N, D, M, C = c.num_latents, c.latent_channels, c.inputs, c.input_channels
    encoder_cross = attention(N, M, D, C, C, C, D, absorbed) + mlp(N, D, c.widening)
    self_layer = attention(N, N, D, D, D, D, D) + mlp(N, D, c.widening)
    decoder = attention(1, N, D, D, D, D, D, absorbed) + mlp(1, D, 1) + linear(1, D, c.num_classes)
    return c.batch * (encoder_cross + c.self_layers * self_layer + decoder)


def flow_forward_flops(c: FlowConfig, absorbed: bool = False) -> int:
    N, D, M, C = c.num_latents, c.latent_channels, c.inputs, c.input_channels
    adapter = linear(M, 2 * c.patch_channels, c.patch_hidden)
    encoder_cross = attention(N, M, D, C, C, C, D, absorbed) + mlp(N, D, 1)
    self_layer = attention(N, N, D, D, D, D, D) + mlp(N, D, 1)
    decoder = attention(M, N, C, D, D, D, C, absorbed) + mlp(M, C, 1) + linear(M, C, 2)
    return c.batch * (adapter + encoder_cross + c.self_layers * self_layer + decoder)


def forward_flops(c: ClassifierConfig | FlowConfig, absorbed: bool = False) -> int:
    return flow_forward_flops(c, absorbed) if isinstance(c, FlowConfig) else classifier_forward_flops(c, absorbed)


def step_flops(c: ClassifierConfig | FlowConfig, mode: str) -> int:
    """mode "train": forward + backward; "forward": inference only."""
    return forward_flops(c) * (3 if mode == "train" else 1)
