"""GridTokens: position features kept per axis, and cross-attention to and from them without expanding them."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from perceiver_mt.model import ConcatFourierPositions, DecoderConfig, EncoderConfig, PerceiverDecoder, PerceiverEncoder
from perceiver_mt.model.attention import CrossAttentionLayer
from perceiver_mt.parallelize import apply_activation_checkpointing
from perceiver_mt.speed import SpeedConfig, apply_speedups
from perceiver_mt.speed.attention import GRID_KEYS
from perceiver_mt.speed.grid_tokens import GridFourierPositions, GridTokens


def grid_concat(index_dims, num_bands=2, **options) -> ConcatFourierPositions:
    return apply_speedups(ConcatFourierPositions(index_dims, num_bands, **options), SpeedConfig())


def fourier_tokens(grid=(6, 5), content_channels=3, batch=2, num_bands=2) -> GridTokens:
    return grid_concat(grid, num_bands, cached=False)(torch.randn(batch, math.prod(grid), content_channels))


def shared_channel_tokens(grid=(4, 3, 5), content_channels=2, batch=2, position_channels=6) -> GridTokens:
    """A learned-style encoding: one table per axis, all over the same channels (cross terms in the statistics)."""
    return GridTokens(torch.randn(batch, math.prod(grid), content_channels) + 0.5,
                      tuple(torch.randn(n, position_channels) + 1.0 for n in grid))


@pytest.mark.parametrize(("index_dims", "concat_pos", "sine_only"), [
    ((7,), True, False), ((6, 5), True, False), ((6, 5), False, True), ((3, 4, 2), True, False),
])
def test_axis_tables_sum_to_exactly_the_grid_features(index_dims, concat_pos, sine_only):
    reference = ConcatFourierPositions(index_dims, 3, concat_pos=concat_pos, sine_only=sine_only)
    grid = grid_concat(index_dims, 3, concat_pos=concat_pos, sine_only=sine_only)
    assert isinstance(grid, GridFourierPositions)
    content = torch.randn(2, math.prod(index_dims), 2)
    tokens = grid(content)
    assert tokens.shape == (2, math.prod(index_dims), 2 + reference.num_channels)
    assert torch.equal(tokens.materialize(), reference(content))  # bit for bit


@pytest.mark.parametrize("make", [fourier_tokens, shared_channel_tokens])
def test_layer_norm_statistics_per_axis_are_those_of_the_expanded_tokens(make):
    torch.manual_seed(0)
    tokens = make()
    dense = tokens.materialize().double()
    mean, rstd = tokens.layer_norm_statistics(1e-5)
    torch.testing.assert_close(mean.double(), dense.mean(-1))
    torch.testing.assert_close(rstd.double(), (dense.var(-1, unbiased=False) + 1e-5).rsqrt())


def test_points_of_any_range_are_those_of_the_expanded_tokens():
    tokens = shared_channel_tokens()
    dense = tokens.materialize()
    for start, stop in [(0, 60), (7, 23), (14, 15), (44, 60)]:
        assert torch.equal(tokens.points(start, stop), dense[:, start:stop])


@pytest.mark.parametrize("make", [fourier_tokens, shared_channel_tokens])
def test_any_points_taken_per_sample_are_those_of_the_expanded_tokens(make):
    """Subsampled decoding takes each sample's own points (B, S) from queries kept per axis."""
    tokens = make()
    index = torch.stack([torch.randperm(tokens.shape[1], generator=torch.Generator().manual_seed(s))[:7]
                         for s in range(tokens.shape[0])])
    taken = tokens.take(index)  # before any expansion: content gathered, positions looked up per axis
    assert not tokens.is_materialized
    dense = tokens.materialize()
    expected = torch.gather(dense, 1, index[..., None].expand(-1, -1, dense.shape[-1]))
    assert torch.equal(taken, expected) and torch.equal(tokens.take(index), expected)  # and after it


def test_inference_splits_into_whole_rows_and_training_into_lazy_points():
    tokens = shared_channel_tokens()  # 4 x 3 x 5 grid: 15 points per row
    dense = tokens.materialize()
    fresh = GridTokens(tokens.content, tokens.tables)
    with torch.no_grad():
        rows = fresh.split(40)  # as many whole rows as fit: 2
        single = fresh.split(7)  # less than a row: one row at a time
    assert [c.grid for c in rows] == [(2, 3, 5), (2, 3, 5)] and [c.grid[0] for c in single] == [1] * 4
    assert torch.equal(torch.cat([c.materialize() for c in rows], dim=1), dense)
    points = fresh.split(7)  # recording gradients: 7 points each, expanded only when used
    assert not fresh.is_materialized and [p.shape[1] for p in points] == [7] * 8 + [4]
    assert all(torch.equal(a.materialize(), b) for a, b in zip(points, dense.split(7, dim=1)))
    views = tokens.split(30)  # once expanded, chunks are views of the one expanded tensor
    assert all(v._base is dense for v in views)


def test_inconsistent_grid_tokens_are_refused_with_the_shapes():
    with pytest.raises(ValueError, match=r"content has 10 points but the grid \(3, 4\) has 12"):
        GridTokens(torch.zeros(1, 10, 2), (torch.zeros(3, 5), torch.zeros(4, 5)))
    with pytest.raises(ValueError, match="tables of one width"):
        GridTokens(torch.zeros(1, 12, 2), (torch.zeros(3, 5), torch.zeros(4, 6)))


def randomized(module: torch.nn.Module) -> torch.nn.Module:
    """With the default speedups, gains and biases away from 1 and 0 (so a dropped term would show), in eval mode."""
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return apply_speedups(module, SpeedConfig()).eval()


@pytest.mark.parametrize("make", [fourier_tokens, shared_channel_tokens])
@pytest.mark.parametrize("num_heads", [1, 2])
def test_latents_attend_to_grid_tokens_as_to_the_expanded_tokens(make, num_heads, monkeypatch):
    torch.manual_seed(0)
    tokens = make()
    B, M, C = tokens.shape
    layer = randomized(CrossAttentionLayer(32, C, num_heads, qk_channels=64, v_channels=64, widening_factor=2))
    latents = torch.randn(B, 5, 32)
    assert layer.attention.plan_for(5, M) == GRID_KEYS  # few input channels: the latents attend to them directly
    monkeypatch.setattr("perceiver_mt.speed.grid_attention.SCORE_CHUNK", 2 * M)  # several chunks of latents
    with torch.no_grad():
        expected = layer(latents, tokens.materialize())
        fresh = GridTokens(tokens.content, tokens.tables)
        out = layer(latents, fresh)
    assert not fresh.is_materialized
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("make", [fourier_tokens, shared_channel_tokens])
@pytest.mark.parametrize(("num_heads", "query_residual", "chunk"),
                         [(1, False, None), (2, True, None), (1, False, 15), (1, False, 7)])
def test_grid_queries_attend_to_latents_as_the_expanded_tokens(make, num_heads, query_residual, chunk, monkeypatch):
    torch.manual_seed(0)
    tokens = make()
    B, M, C = tokens.shape
    decoder = randomized(PerceiverDecoder(DecoderConfig(
        query_channels=C, num_heads=num_heads, qk_channels=64, v_channels=64, query_residual=query_residual),
        latent_channels=48))
    apply_speedups(decoder, SpeedConfig(query_chunk_size=chunk))
    latents = torch.randn(B, 7, 48)
    monkeypatch.setattr("perceiver_mt.speed.grid_attention.SCORE_CHUNK", 3 * 7 * 5)  # a few rows at a time
    with torch.no_grad():
        expected = decoder(tokens.materialize(), latents)
        fresh = GridTokens(tokens.content, tokens.tables)
        out = decoder(fresh, latents)
    assert fresh.is_materialized == query_residual  # only a query residual needs the expanded tokens
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(("checkpointing", "chunk"), [(False, None), (True, 7), (True, 10)])  # 10 = 2 whole rows
def test_training_expands_grid_tokens_once_and_gets_the_same_gradients(checkpointing, chunk):
    torch.manual_seed(0)
    tokens = fourier_tokens()
    B, M, C = tokens.shape
    reference = torch.nn.Module()  # what parallel.py checkpoints: an encoder and task decoders
    reference.encoder = PerceiverEncoder(EncoderConfig(
        input_channels=C, num_latents=4, latent_channels=32, cross_attention_qk_channels=64,
        num_self_attention_heads=2, num_self_attends_per_block=1))
    reference.tasks = torch.nn.ModuleDict({"flow": torch.nn.Module()})
    reference.tasks["flow"].decoder = PerceiverDecoder(DecoderConfig(query_channels=C, qk_channels=64,
                                                                     query_residual=False), 32)
    for p in reference.parameters():
        torch.nn.init.normal_(p, std=0.5)
    reference.double()  # against the reference's other order of operations: float64, to leave only real differences
    tokens = GridTokens(tokens.content.double(), tuple(t.double() for t in tokens.tables))
    model = apply_speedups(copy.deepcopy(reference), SpeedConfig(input_chunk_size=chunk, query_chunk_size=chunk))
    encoder, decoder = model.encoder, model.tasks["flow"].decoder
    if checkpointing:
        apply_activation_checkpointing(model)
        assert decoder.checkpoint_chunks  # chunked decoding: one checkpoint per chunk
    content = tokens.content.clone().requires_grad_()

    def loss(model: torch.nn.Module, queries_and_inputs) -> torch.Tensor:
        decoder = model.tasks["flow"].decoder
        return decoder(queries_and_inputs, model.encoder(queries_and_inputs)).square().sum()

    def gradients(model: torch.nn.Module, tokens) -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(loss(model, tokens), [content, *model.parameters()])  # every one gets a gradient

    grid = GridTokens(content, tokens.tables)
    grads = gradients(model, grid)
    # Gradients go through the fused kernels, which store no scores: the tokens are expanded once, or, in
    # checkpointed chunks of points that are not whole rows, each chunk only while it is computed.
    assert grid.is_materialized != checkpointing
    dense = torch.cat([content, grid.positions().expand(B, -1, -1)], dim=-1)
    for name, got, want in zip(["content", *dict(model.named_parameters())], grads, gradients(reference, dense)):
        torch.testing.assert_close(got, want, msg=lambda m, name=name: f"{name}: {m}")
    with torch.no_grad():  # and inference takes the per-axis path to the reference's outputs
        fresh = GridTokens(content.detach(), tokens.tables)
        reference_out = reference.tasks["flow"].decoder(dense, reference.encoder(dense))
        torch.testing.assert_close(decoder(fresh, encoder(fresh)), reference_out, atol=1e-5, rtol=1e-4)
    assert not fresh.is_materialized


def test_padding_masks_fall_back_to_the_expanded_tokens():
    torch.manual_seed(0)
    tokens = fourier_tokens()
    B, M, C = tokens.shape
    layer = randomized(CrossAttentionLayer(32, C, 1, qk_channels=64, v_channels=64))
    pad_mask = torch.zeros(B, M, dtype=torch.bool)
    pad_mask[1, -4:] = True
    latents = torch.randn(B, 5, 32)
    with torch.no_grad():
        out = layer(latents, tokens, pad_mask)
        assert tokens.is_materialized
        torch.testing.assert_close(out[1:], layer(latents[1:], tokens.materialize()[1:, :-4]))  # padding ignored


def test_a_frozen_layer_under_trainable_latents_still_passes_gradients_back():
    torch.manual_seed(0)
    tokens = fourier_tokens()
    B, M, C = tokens.shape
    layer = randomized(CrossAttentionLayer(32, C, 1, qk_channels=64, v_channels=64)).requires_grad_(False)
    latents = torch.randn(B, 5, 32, requires_grad=True)
    grid = GridTokens(tokens.content, tokens.tables)
    (got,) = torch.autograd.grad(layer(latents, grid).square().sum(), latents)
    (want,) = torch.autograd.grad(layer(latents, tokens.materialize()).square().sum(), latents)
    assert grid.is_materialized
    torch.testing.assert_close(got, want)


# --- the modality kit: grid features that reach the encoder as they are ----------------------------------------


def image_classifier(prep: str, project: bool, speed: SpeedConfig):
    """The image_classification plugin on a tiny grid, as training builds it (`build_network`)."""
    from perceiver_mt.config import RunConfig, TaskConfig
    from perceiver_mt.plugins import build_network, build_tasks

    options = {"image_size": [12, 12], "prep": prep, "num_bands": 3, "conv_channels": 5, "num_classes": 4,
               "query_channels": 16, "project_tokens": project}
    features = (3 if prep == "pixels" else 5) + 2 * (2 * 3 + 1)  # [pixels or stem channels | 2D Fourier]
    config = RunConfig(
        model=EncoderConfig(input_channels=features if not project else 24, num_latents=6, latent_channels=16,
                            num_cross_attention_heads=1, num_self_attention_heads=2, num_self_attends_per_block=1),
        speed=speed, tasks={"img": TaskConfig(plugin="image_classification", options=options)},
    )
    torch.manual_seed(0)
    return build_network(config, build_tasks(config))  # float32: the grid tables then equal the cached features bit for bit


@pytest.mark.parametrize("prep", ["pixels", "conv"])
def test_unprojected_kit_features_become_grid_tokens_and_compute_the_reference(prep):
    """DeepMind's ImageNet front ends feed [pixels | Fourier] (or [stem | Fourier]) unprojected: the grid-token
    speedup applies to them; inference takes the per-axis path and training expands them, both equal to the
    reference model with the same weights."""
    reference = image_classifier(prep, project=False, speed=SpeedConfig(enabled=False))
    fast = image_classifier(prep, project=False, speed=SpeedConfig())
    fast.load_state_dict(reference.state_dict())
    adapter = fast.tasks["img"].adapter
    images = torch.rand(3, 12, 12, 3, generator=torch.Generator().manual_seed(2))
    batch = {"inputs": images}
    fast.eval(), reference.eval()
    with torch.no_grad():
        assert isinstance(adapter(batch), GridTokens)
        torch.testing.assert_close(fast("img", batch), reference("img", batch))
    fast.train(), reference.train()  # batch norm of the conv stem in training mode too
    grads = {}
    for name, model in (("fast", fast), ("reference", reference)):
        out = model("img", batch)
        grads[name] = (out.detach(), torch.autograd.grad(out.square().sum(), list(model.parameters())))
    torch.testing.assert_close(grads["fast"][0], grads["reference"][0])
    for got, expected in zip(grads["fast"][1], grads["reference"][1]):  # float32, products in another order
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_projected_kit_features_stay_a_tensor_and_keep_their_names():
    """Features projected to the encoder's width are no grid of [content | positions]: nothing changes there."""
    fast = image_classifier("pixels", project=True, speed=SpeedConfig())
    reference = image_classifier("pixels", project=True, speed=SpeedConfig(enabled=False))
    assert not any(isinstance(m, (ConcatFourierPositions, GridFourierPositions)) for m in fast.modules())
    assert set(fast.state_dict()) == set(reference.state_dict())
    assert set(image_classifier("pixels", project=False, speed=SpeedConfig()).state_dict()) == set(
        image_classifier("pixels", project=False, speed=SpeedConfig(enabled=False)).state_dict())
    tokens = fast.tasks["img"].adapter({"inputs": torch.rand(2, 12, 12, 3)})
    assert isinstance(tokens, torch.Tensor) and tokens.shape == (2, 144, 24)
