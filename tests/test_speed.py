"""The speed seam: every speedup computes the reference model's function with the reference model's parameters.

Each switch of `SpeedConfig`, alone and together, against the reference path on a whole multi-task network:
outputs and gradients, with and without padding, one or several heads, grid tokens on 1-3 axes, chunked or
not; then the seam itself (names kept, steps in order, a new variant in one file) and where it meets
`parallelize`. Projection orders and grid tokens in detail: test_absorption.py, test_grid_tokens.py.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from perceiver_mt.model import (
    ConcatFourierPositions, DecoderConfig, EncoderConfig, MultiTaskPerceiver, PerceiverDecoder, PerceiverEncoder,
)
from perceiver_mt.model.attention import MultiHeadAttention
from perceiver_mt.model.init import fan_in_init_
from perceiver_mt.parallelize import ParallelConfig, parallelize
from perceiver_mt.speed import SpeedConfig, apply_speedups, swap_modules
from perceiver_mt.speed.attention import FastAttention
from perceiver_mt.speed.kernels import cuda_attention_kernel, fused_head_widths
from perceiver_mt.speed.layers import ChunkedDecoder
from perceiver_mt.system import MultiTaskSystem
from helpers import SMALL, reference_attention

# --- a small network that exercises every speedup ----------------------------------------------------------


class GridParts:
    """The model parts of a per-point task on a grid: [content | Fourier positions] tokens in, one query per
    point (its own [content | positions]) out, a per-point head; padding masks the last points if asked."""

    def __init__(self, grid: tuple[int, ...], heads: int):
        self.grid, self.heads = grid, heads
        self.channels = 3 + ConcatFourierPositions(grid, 2).num_channels
        self.encoder = EncoderConfig(
            input_channels=self.channels, num_latents=6, latent_channels=16, num_cross_attention_heads=heads,
            cross_attention_qk_channels=8 * heads, num_self_attention_heads=2, num_self_attends_per_block=1,
            num_blocks=2, num_cross_attends=2,
        )

    def build_adapter(self) -> nn.Module:
        return GridTokensOf(self.grid, with_padding=True)

    def build_queries(self) -> nn.Module:
        return GridTokensOf(self.grid, with_padding=False)

    def decoder_config(self) -> DecoderConfig:
        return DecoderConfig(query_channels=self.channels, num_heads=self.heads, qk_channels=8 * self.heads,
                             v_channels=8 * self.heads, query_residual=True)

    def build_head(self) -> nn.Module:
        return nn.Linear(self.channels, 4)

    def init_weights(self, part: nn.Module) -> None:
        fan_in_init_(part)


class GridTokensOf(nn.Module):
    def __init__(self, grid: tuple[int, ...], with_padding: bool):
        super().__init__()
        self.project = nn.Linear(2, 3)
        self.positions = ConcatFourierPositions(grid, 2, cached=False)
        self.with_padding = with_padding

    def forward(self, batch: dict) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        tokens = self.positions(self.project(batch["inputs"]))  # (B, M, 3 + Cp)
        return (tokens, batch.get("pad_mask")) if self.with_padding else tokens


def grid_network(grid: tuple[int, ...], heads: int) -> MultiTaskPerceiver:
    torch.manual_seed(0)
    parts = GridParts(grid, heads)
    model = MultiTaskPerceiver(parts.encoder, {"grid": parts}).double()
    for p in model.parameters():  # gains and biases away from 1 and 0, so a dropped term would show
        nn.init.normal_(p, std=0.5)
    return model


def grid_batch(grid: tuple[int, ...], padded: bool) -> dict:
    M = math.prod(grid)
    batch = {"inputs": torch.randn(2, M, 2, dtype=torch.double, generator=torch.Generator().manual_seed(1))}
    if padded:
        batch["pad_mask"] = torch.zeros(2, M, dtype=torch.bool)
        batch["pad_mask"][1, M // 2:] = True
    return batch


def outputs_and_gradients(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.train()
    out = model("grid", batch)
    names, params = zip(*model.named_parameters())
    # Every parameter gets a gradient in every order (the optimizer's state and DDP's reducer see them all).
    grads = torch.autograd.grad(out.square().sum(), params)
    return out.detach(), dict(zip(names, grads))


SWITCHES = {
    "defaults": SpeedConfig(),
    "projected": SpeedConfig(projection_order="projected"),
    "matmul": SpeedConfig(attention_kernel="matmul"),
    "fused": SpeedConfig(attention_kernel="fused"),
    "no_grid_tokens": SpeedConfig(grid_tokens=False),
    "unpadded_heads": SpeedConfig(pad_heads=False),
    "chunks": SpeedConfig(input_chunk_size=5, query_chunk_size=4),
}


# The fast loop (-m "not slow") keeps every switch on a padded 2-head, 2-axis grid; the rest is slow.
SLOW = pytest.mark.slow


@pytest.mark.parametrize("grid", [pytest.param((7,), marks=SLOW), (3, 4), pytest.param((2, 3, 2), marks=SLOW)],
                         ids=lambda g: f"{len(g)}axes")
@pytest.mark.parametrize(("heads", "padded"), [pytest.param(1, False, marks=SLOW), (2, True)],
                         ids=["1head", "2heads_padded"])
@pytest.mark.parametrize("switch", list(SWITCHES))
def test_each_speedup_computes_the_reference_function(switch, heads, padded, grid):
    reference = grid_network(grid, heads)
    fast = apply_speedups(copy.deepcopy(reference), SWITCHES[switch])
    batch = grid_batch(grid, padded)
    expected, expected_grads = outputs_and_gradients(reference, batch)
    got, got_grads = outputs_and_gradients(fast, batch)
    torch.testing.assert_close(got, expected)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(got_grads[name], grad, msg=lambda m, name=name: f"{name}: {m}")
    with torch.no_grad():  # inference: GridTokens take the per-axis path where they can
        torch.testing.assert_close(fast.eval()("grid", batch), reference.eval()("grid", batch))


def test_the_speedups_keep_every_parameter_name_and_value(debug_config):
    """Old checkpoints and converted weights load: the seam changes classes, never names or values."""
    debug_config.speed.enabled = False
    reference = MultiTaskSystem.from_config(debug_config).model
    debug_config.speed = SpeedConfig(input_chunk_size=3, query_chunk_size=5)
    fast = MultiTaskSystem.from_config(debug_config).model
    assert not any(isinstance(m, FastAttention) for m in reference.modules())
    assert all(isinstance(m, FastAttention) for m in fast.modules() if isinstance(m, MultiHeadAttention))
    assert set(fast.state_dict()) == set(reference.state_dict())
    assert "encoder.cross_attentions.0.attention.to_k.weight" in fast.state_dict()
    assert "tasks.digits.decoder.cross_attention.mlp.net.3.bias" in fast.state_dict()
    fast.load_state_dict(reference.state_dict())  # strict: every key, nothing extra


def test_each_step_reports_one_line_in_a_fixed_order():
    model = grid_network((3, 4), 1)
    lines: list[str] = []
    apply_speedups(model, SpeedConfig(input_chunk_size=5, query_chunk_size=4), log=lines.append)
    assert [line.split(" to ")[0] for line in lines] == [
        "Applied fast attention", "Applied grid tokens", "Applied input chunks of 5 points",
        "Applied query chunks of 4"]
    assert "4 attentions (3 cross-attention layers)" in lines[0] and "2 Fourier-position" in lines[1]
    lines.clear()
    apply_speedups(grid_network((3, 4), 1), SpeedConfig(enabled=False), log=lines.append)
    assert lines == ["Speedups off (speed.enabled=false): the reference model as written"]


@pytest.mark.parametrize(("options", "message"), [
    ({"attention_kernel": "flash"}, "speed.attention_kernel='flash' is unknown; choose one of auto, fused, matmul"),
    ({"projection_order": "best"}, "speed.projection_order='best' is unknown; choose one of cheapest, projected"),
    ({"input_chunk_size": 0}, "speed.input_chunk_size must be a positive number of points or null, got 0"),
])
def test_bad_speed_options_fail_in_one_line(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        apply_speedups(nn.Linear(1, 1), SpeedConfig(**options))


# --- the seam is right: a new variant of a reference layer is one file ---------------------------------------


class MatmulAttention(MultiHeadAttention):
    """A new way to compute the reference attention: everything it needs is in this class and one call."""

    def forward(self, x_q, x_kv, pad_mask=None):
        q, k, v = self.split_heads(self.to_q(x_q)), self.split_heads(self.to_k(x_kv)), self.split_heads(self.to_v(x_kv))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Q, K)
        if pad_mask is not None:
            scores = scores.masked_fill(pad_mask[:, None, None, :], float("-inf"))
        out = scores.softmax(-1) @ v  # (B, H, Q, Cv/H)
        return self.to_out(out.transpose(1, 2).flatten(2))


def test_a_new_attention_variant_is_added_in_one_file_without_touching_the_reference():
    reference = grid_network((3, 4), 2)
    variant = copy.deepcopy(reference)
    assert swap_modules(variant, MultiHeadAttention, MatmulAttention) == 4
    batch = grid_batch((3, 4), padded=True)
    torch.testing.assert_close(variant("grid", batch), reference("grid", batch))
    assert set(variant.state_dict()) == set(reference.state_dict())
    with pytest.raises(TypeError, match="MatmulAttention must subclass PerceiverDecoder"):
        swap_modules(variant, PerceiverDecoder, MatmulAttention)


# --- kernel choice and input chunks ---------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["fused", "matmul"])
@pytest.mark.parametrize("num_heads", [1, 4])
def test_both_attention_kernels_equal_plain_reference(num_heads, kernel):
    torch.manual_seed(0)
    attention = MultiHeadAttention(q_channels=8, kv_channels=12, num_heads=num_heads, qk_channels=16,
                                   v_channels=24, out_channels=10)
    x_q, x_kv = torch.randn(2, 5, 8, requires_grad=True), torch.randn(2, 7, 12)
    pad_mask = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])
    expected = reference_attention(attention, x_q, x_kv, pad_mask)
    expected_grad, = torch.autograd.grad(expected.square().sum(), x_q)
    apply_speedups(attention, SpeedConfig(attention_kernel=kernel))
    assert attention.kernel == kernel
    out = attention(x_q, x_kv, pad_mask)
    grad, = torch.autograd.grad(out.square().sum(), x_q)
    assert attention(x_q, x_kv).shape == (2, 5, 10)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad, expected_grad)


def test_gpu_attention_uses_two_gemms_only_where_fused_kernels_were_measured_slow():
    def kernel(batch, heads, queries, head_channels, keys, dtype=torch.float32, training=True):
        return cuda_attention_kernel(batch, heads, queries, head_channels, keys, dtype, 132, training)  # H200: 132 SMs

    # one cross-attention head, 256 latents, 50k inputs: 16 blocks of queries for 132 multiprocessors
    assert kernel(4, 1, 256, 64, 50_176) == "matmul"
    assert kernel(4, 1, 256, 64, 50_176, dtype=torch.bfloat16) == "fused"  # flash attention wins there
    assert kernel(8, 8, 256, 64, 256) == "fused"  # latent self-attention: enough blocks
    assert kernel(4, 1, 256, 64, 1_024) == "fused"  # short rows: scores not worth storing
    # the flow decoder's one 512-channel head over 182k pixel queries: GEMMs to train, fused to infer
    assert kernel(1, 1, 182_528, 512, 2_048) == "matmul"
    assert kernel(1, 1, 182_528, 512, 2_048, dtype=torch.bfloat16) == "matmul"
    assert kernel(1, 1, 182_528, 512, 2_048, training=False) == "fused"
    assert kernel(1, 16, 2_048, 32, 2_048) == "fused"  # its latent self-attention


@pytest.mark.parametrize(("qk", "v", "dtype", "widths"), [
    (261, 261, torch.bfloat16, (264, 264)),  # DeepMind's ImageNet cross-attention: memory-efficient kernel
    (261, 261, torch.float32, (264, 264)),
    (323, 322, torch.bfloat16, (328, 328)),  # the flow decoder's absorbed orders, wider than flash's 256
    (100, 60, torch.bfloat16, (104, 104)),  # flash needs one width for q, k and v
    (100, 60, torch.float32, (104, 64)),  # no flash in fp32: aligned only
    (128, 128, torch.bfloat16, (128, 128)),  # already fine: untouched
])
def test_heads_are_padded_to_widths_the_cuda_fused_kernels_take(qk, v, dtype, widths):
    """The widths follow PyTorch's constraints (sdp_utils.cpp); the function stays the same: SDPA on the padded
    tensors, cut back to v's width, equals SDPA on the originals, outputs and gradients (checked on CPU)."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 2, 5, qk, generator=g, dtype=torch.double), torch.randn(2, 2, 7, qk, generator=g, dtype=torch.double)
    values = torch.randn(2, 2, 7, v, generator=g, dtype=torch.double)
    padded = fused_head_widths(q.to(dtype), k.to(dtype), values.to(dtype), "cuda")
    assert (padded[0].shape[-1], padded[2].shape[-1]) == widths and padded[1].shape[-1] == widths[0]
    inputs = [t.clone().requires_grad_() for t in (q, k, values)]
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])[:, None, None, :]

    def attend(pad: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        q_, k_, v_ = fused_head_widths(*inputs, "cuda") if pad else inputs
        out = torch.nn.functional.scaled_dot_product_attention(q_, k_, v_, attn_mask=mask, scale=qk ** -0.5)[..., :v]
        return out, torch.autograd.grad(out.square().sum(), inputs)

    (out, grads), (expected, expected_grads) = attend(pad=True), attend(pad=False)
    torch.testing.assert_close(out, expected)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)
    cpu = fused_head_widths(q, k, values, "cpu")  # CPU flash attention: one width for q/k and v, no alignment
    assert cpu[0].shape[-1] == cpu[2].shape[-1] == max(qk, v)


def test_input_chunks_change_memory_not_results():
    """Chunked cross-attention (recomputed in backward) gives the same latents and gradients, padding included:
    a chunk of nothing but padding must weigh nothing."""
    torch.manual_seed(0)
    config = dict(SMALL, num_cross_attention_heads=2, cross_attention_qk_channels=8, num_blocks=2, num_cross_attends=2)
    whole = PerceiverEncoder(EncoderConfig(**config)).double()
    chunked = apply_speedups(copy.deepcopy(whole), SpeedConfig(input_chunk_size=5))
    assert all(layer.input_chunk_size == 5 for layer in chunked.cross_attentions)
    tokens = torch.randn(3, 23, 12, dtype=torch.double)
    pad_mask = torch.zeros(3, 23, dtype=torch.bool)
    pad_mask[1, 9:] = True  # chunks 2..4 of sample 1 are all padding
    for model in (whole, chunked):
        latents = model(tokens, pad_mask)
        model.grads = torch.autograd.grad(latents.square().sum(), list(model.parameters()))
        model.latents_out = latents.detach()
    torch.testing.assert_close(chunked.latents_out, whole.latents_out)
    for name, got, expected in zip(dict(whole.named_parameters()), chunked.grads, whole.grads):
        torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-7, msg=name)


# --- where the seam meets parallelize -------------------------------------------------------------------------


def test_checkpointing_recomputes_chunked_decoders_per_chunk():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    model = apply_speedups(grid_network((3, 4), 1), SpeedConfig(query_chunk_size=4))
    names = set(model.state_dict())
    parallelize(model, ParallelConfig(activation_checkpointing=True))
    decoder = model.tasks["grid"].decoder
    assert isinstance(decoder, ChunkedDecoder) and decoder.checkpoint_chunks  # not wrapped whole
    assert all(isinstance(layer, CheckpointWrapper) for layer in model.encoder.cross_attentions)
    assert set(model.state_dict()) == names
    plain = parallelize(grid_network((3, 4), 1), ParallelConfig(activation_checkpointing=True))
    assert isinstance(plain.tasks["grid"].decoder, CheckpointWrapper)  # the reference decoder: wrapped whole


@pytest.mark.slow  # importing torch.compile's machinery takes seconds
def test_compile_applies_to_the_chosen_modules_and_keeps_names():
    model = grid_network((3, 4), 1)
    names = set(model.state_dict())
    parallelize(model, ParallelConfig(compile="latent_layers"))
    assert all(layer._compiled_call_impl is not None for layer in model.encoder.self_attentions)
    assert model.encoder._compiled_call_impl is None
    assert set(model.state_dict()) == names
    whole = parallelize(grid_network((3, 4), 1), ParallelConfig(compile="encoder"))
    assert whole.encoder._compiled_call_impl is not None
