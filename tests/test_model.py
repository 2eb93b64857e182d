"""The reference Perceiver IO model on its own: shapes, masking, weight sharing, attention numerics.

The speedups (perceiver_mt/speed/) are tested equal to it in test_speed.py, test_absorption.py and
test_grid_tokens.py."""

from __future__ import annotations

import pytest
import torch

from helpers import SMALL, reference_attention
from perceiver_mt.model import DecoderConfig, EncoderConfig, PerceiverDecoder, PerceiverEncoder
from perceiver_mt.model.attention import MultiHeadAttention


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_encoder_and_decoder_shapes():
    torch.manual_seed(0)
    encoder = PerceiverEncoder(EncoderConfig(**SMALL, num_blocks=2))
    latents = encoder(torch.randn(3, 50, 12))
    assert latents.shape == (3, 6, 16)
    decoder = PerceiverDecoder(DecoderConfig(query_channels=10, num_heads=2), latent_channels=16)
    assert decoder(torch.randn(3, 7, 10), latents).shape == (3, 7, 10)


def test_encoder_rejects_wrong_channel_count():
    encoder = PerceiverEncoder(EncoderConfig(**SMALL))
    with pytest.raises(ValueError, match="12 channels"):
        encoder(torch.randn(2, 5, 13))


def test_padding_has_exactly_no_effect():
    torch.manual_seed(0)
    encoder = PerceiverEncoder(EncoderConfig(**SMALL, num_blocks=2, num_cross_attends=2)).eval()
    tokens = torch.randn(2, 9, 12)
    garbage = torch.randn(2, 5, 12) * 100  # padding of any value must be ignored
    padded = torch.cat([tokens, garbage], dim=1)
    pad_mask = torch.zeros(2, 14, dtype=torch.bool)
    pad_mask[:, 9:] = True
    expected = encoder(tokens)
    got = encoder(padded, pad_mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(encoder(padded), expected, atol=1e-3)  # without the mask it does matter


def test_more_blocks_add_compute_not_parameters():
    one = PerceiverEncoder(EncoderConfig(**SMALL, num_blocks=1))
    four = PerceiverEncoder(EncoderConfig(**SMALL, num_blocks=4))
    assert count_parameters(one) == count_parameters(four)
    four.load_state_dict(one.state_dict())
    x = torch.randn(2, 8, 12)
    assert not torch.allclose(one(x), four(x))  # the shared block really runs again


def test_iterative_cross_attention_shares_weights_after_the_first():
    two = PerceiverEncoder(EncoderConfig(**SMALL, num_blocks=4, num_cross_attends=2))
    four = PerceiverEncoder(EncoderConfig(**SMALL, num_blocks=4, num_cross_attends=4))
    single = PerceiverEncoder(EncoderConfig(**SMALL, num_blocks=4, num_cross_attends=1))
    assert count_parameters(two) == count_parameters(four) > count_parameters(single)
    with pytest.raises(ValueError, match="num_cross_attends"):
        PerceiverEncoder(EncoderConfig(**SMALL, num_blocks=1, num_cross_attends=2))


@pytest.mark.parametrize("num_heads", [1, 4])
def test_attention_equals_plain_per_head_reference(num_heads):
    torch.manual_seed(0)
    attention = MultiHeadAttention(q_channels=8, kv_channels=12, num_heads=num_heads, qk_channels=16,
                                   v_channels=24, out_channels=10)
    x_q, x_kv = torch.randn(2, 5, 8, requires_grad=True), torch.randn(2, 7, 12)
    pad_mask = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])
    expected = reference_attention(attention, x_q, x_kv, pad_mask)
    expected_grad, = torch.autograd.grad(expected.square().sum(), x_q)
    out = attention(x_q, x_kv, pad_mask)
    grad, = torch.autograd.grad(out.square().sum(), x_q)
    assert attention(x_q, x_kv).shape == (2, 5, 10)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad, expected_grad)


def test_heads_must_divide_channels():
    with pytest.raises(ValueError, match="divisible by num_heads=3"):
        MultiHeadAttention(8, 8, num_heads=3, qk_channels=16)


def test_decoder_query_residual_switch():
    torch.manual_seed(0)
    latents = torch.randn(1, 4, 16)
    queries = torch.randn(1, 3, 8)
    with_residual = PerceiverDecoder(DecoderConfig(query_channels=8, query_residual=True), 16)
    without = PerceiverDecoder(DecoderConfig(query_channels=8, query_residual=False), 16)
    without.load_state_dict(with_residual.state_dict())
    attended = with_residual.cross_attention.attention(
        with_residual.cross_attention.q_norm(queries), with_residual.cross_attention.kv_norm(latents))
    mlp = with_residual.cross_attention.mlp
    torch.testing.assert_close(with_residual(queries, latents), queries + attended + mlp(queries + attended))
    torch.testing.assert_close(without(queries, latents), attended + mlp(attended))


def test_query_gains_scale_only_the_cross_attention_query_weights_at_init():
    def built(gain: float) -> tuple[PerceiverEncoder, PerceiverDecoder]:
        torch.manual_seed(0)
        encoder = PerceiverEncoder(EncoderConfig(**SMALL, cross_attention_query_gain=gain))
        decoder = PerceiverDecoder(DecoderConfig(query_channels=16, query_gain=gain), SMALL["latent_channels"])
        return encoder, decoder

    plain, sharp = built(1.0), built(4.0)
    for before, after in zip(plain, sharp):
        for (name, a), (_, b) in zip(before.named_parameters(), after.named_parameters()):
            is_query = name.endswith("attention.to_q.weight") and "self_attentions" not in name
            torch.testing.assert_close(b, 4.0 * a if is_query else a, msg=name)
    # Sharper: the first cross-attention's weights over the tokens spread further from uniform.
    tokens = torch.randn(2, 50, SMALL["input_channels"])

    def attention_spread(encoder: PerceiverEncoder) -> float:
        layer = encoder.cross_attentions[0]
        q = layer.attention.to_q(layer.q_norm(encoder.latents))
        k = layer.attention.to_k(layer.kv_norm(tokens))
        return (q @ k.transpose(-1, -2)).std().item()
    assert attention_spread(sharp[0]) == pytest.approx(4.0 * attention_spread(plain[0]), rel=1e-4)


@pytest.mark.parametrize("gain", [0.0, -1.0])
def test_a_query_gain_that_is_not_positive_is_refused(gain):
    with pytest.raises(ValueError, match="cross_attention_query_gain=.* must be > 0"):
        PerceiverEncoder(EncoderConfig(**SMALL, cross_attention_query_gain=gain))
    with pytest.raises(ValueError, match="query_gain=.* must be > 0"):
        PerceiverDecoder(DecoderConfig(query_channels=16, query_gain=gain), SMALL["latent_channels"])
