"""The Perceiver IO model on its own: shapes, masking, weight sharing, attention numerics."""

from __future__ import annotations


import pytest
import torch

from helpers import reference_attention
from perceiver_mt.model import DecoderConfig, EncoderConfig, PerceiverDecoder, PerceiverEncoder
from perceiver_mt.model.attention import MultiHeadAttention
from perceiver_mt.model.kernels import cuda_attention_kernel, force_attention_kernel

SMALL = dict(input_channels=12, num_latents=6, latent_channels=16, num_self_attention_heads=2,
             num_self_attends_per_block=2)


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


def test_input_chunks_change_memory_not_results():
    """Chunked cross-attention (recomputed in backward) gives the same latents and gradients, padding included:
    a chunk of nothing but padding must weigh nothing."""
    torch.manual_seed(0)
    config = dict(SMALL, num_cross_attention_heads=2, cross_attention_qk_channels=8, num_blocks=2, num_cross_attends=2)
    whole = PerceiverEncoder(EncoderConfig(**config)).double()
    chunked = PerceiverEncoder(EncoderConfig(**config, input_chunk_size=5)).double()
    chunked.load_state_dict(whole.state_dict())
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
    with pytest.raises(ValueError, match="kv_chunk_size must be a positive number"):
        PerceiverEncoder(EncoderConfig(**config, input_chunk_size=0))


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
    with force_attention_kernel(kernel):
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
    with pytest.raises(ValueError, match="unknown attention kernel 'flash'; choose one of auto, fused, matmul"):
        with force_attention_kernel("flash"):
            pass


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
