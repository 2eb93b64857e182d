"""Where a cross-attention multiplies its projection weights: the order with the fewest FLOPs.

Attention scores are q_i . k_j = (x_i Wq + bq) . (y_j Wk + bk), and outputs are sum_j p_ij (y_j Wv + bv) Wo.
Matrix products associate, so each side can move its projection to whichever end is narrower:

- scores, "absorb_keys": keys are the inputs y themselves and each query becomes (q_i Wk^T), of the
  inputs' width. The bias term q_i . bk is the same for every key of a query, so softmax ignores it.
- scores, "absorb_queries": queries are [x_i, 1] and each key becomes (Wq k_j, bq . k_j), of the
  queries' width plus one.
- values, "absorb_values": attend over the inputs y, then apply Wv and bv (probabilities sum to one).
- values, "absorb_outputs": each value becomes (y_j Wv + bv) Wo for its head, of the output width;
  the heads' outputs are summed.

The result is the same function of the same parameters (up to float rounding), and a Perceiver's
cross-attentions are where it pays: 322 input channels against 512-wide keys in DeepMind's optical
flow network removes ~25% of its FLOPs, and the inputs' keys and values are never materialised.
With several heads every head works in the absorbed width, so it rarely pays there.
"""

from __future__ import annotations

from typing import NamedTuple

SCORE_ORDERS = ("project", "absorb_keys", "absorb_queries")
VALUE_ORDERS = ("project", "absorb_values", "absorb_outputs")
# Absorb only where it saves at least this share of a side's FLOPs: kernels on odd widths run a little
# slower per FLOP, so a near tie is not worth leaving the projected order every reference implementation uses.
MIN_SAVING = 0.1


class AttentionPlan(NamedTuple):
    scores: str = "project"  # one of SCORE_ORDERS
    values: str = "project"  # one of VALUE_ORDERS


PROJECTED = AttentionPlan()


def order_costs(
    queries: int, keys: int, q_channels: int, kv_channels: int, qk_channels: int, v_channels: int,
    out_channels: int, heads: int,
) -> tuple[dict[str, int], dict[str, int]]:
    """Multiply-adds per sample of each order: (scores side, values side), keyed by SCORE_ORDERS / VALUE_ORDERS."""
    scores = {
        "project": queries * q_channels * qk_channels + keys * kv_channels * qk_channels + queries * keys * qk_channels,
        "absorb_keys": queries * q_channels * qk_channels + queries * qk_channels * kv_channels
        + heads * queries * keys * kv_channels,
        "absorb_queries": keys * kv_channels * qk_channels + keys * qk_channels * (q_channels + 1)
        + heads * queries * keys * (q_channels + 1),
    }
    values = {
        "project": keys * kv_channels * v_channels + queries * keys * v_channels + queries * v_channels * out_channels,
        "absorb_values": heads * queries * keys * kv_channels + queries * kv_channels * v_channels
        + queries * v_channels * out_channels,
        "absorb_outputs": keys * kv_channels * v_channels + keys * v_channels * out_channels
        + heads * queries * keys * out_channels,
    }
    return scores, values


def attention_plan(
    queries: int, keys: int, q_channels: int, kv_channels: int, qk_channels: int, v_channels: int,
    out_channels: int, heads: int,
) -> AttentionPlan:
    """The cheapest order for each side of one cross-attention."""
    scores, values = order_costs(queries, keys, q_channels, kv_channels, qk_channels, v_channels, out_channels, heads)
    return AttentionPlan(_cheapest(scores), _cheapest(values))


def _cheapest(costs: dict[str, int]) -> str:
    best = min(costs, key=costs.__getitem__)
    return best if costs[best] < (1 - MIN_SAVING) * costs["project"] else "project"
