"""Point sets, several modalities at once and output queries, through the real model.

Padded points must have exactly no effect; a subset of output queries must decode exactly as the full set
does at those positions; DeepMind's multimodal padding is checked against a hand-built concatenation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics import MetricCollection

from perceiver_mt.model import DecoderConfig, EncoderConfig, MultiTaskPerceiver
from perceiver_mt.modalities import (
    GridQueries, ImagePatches, InputQueries, LearnedQueries, MultimodalInputs, MultimodalQueries, PointFeatures,
    TaskInputError, TokenAdapter, WaveformPatches, check_points, draw_query_subset, pad_point_sets, split_modalities,
    take_queries,
)
from perceiver_mt.task import Task
from references import numpy_fourier_at

ENCODER = EncoderConfig(input_channels=16, num_latents=6, latent_channels=24, num_self_attends_per_block=1)


class KitTask(Task):
    """A task assembled from kit parts handed in by the test."""

    def __init__(self, adapter: nn.Module, queries: nn.Module, query_channels: int):
        super().__init__("kit", None, ENCODER)
        self.parts = adapter, queries
        self.query_channels = query_channels

    def build_adapter(self):
        return self.parts[0]

    def build_queries(self):
        return self.parts[1]

    def decoder_config(self):
        return DecoderConfig(query_channels=self.query_channels, num_heads=2)

    def build_head(self):
        return nn.Linear(self.query_channels, 3)

    def loss(self, outputs, batch):
        return outputs.sum()

    def build_metrics(self):
        return MetricCollection({})


def kit_model(adapter: nn.Module, queries: nn.Module, query_channels: int) -> MultiTaskPerceiver:
    torch.manual_seed(0)
    return MultiTaskPerceiver(ENCODER, {"kit": KitTask(adapter, queries, query_channels)}).eval()


def random_point_sets(sizes, dims=2, features=1, seed=0):
    rng = np.random.default_rng(seed)
    coords = [rng.uniform(-1, 1, (n, dims)).astype(np.float32) for n in sizes]
    values = [rng.uniform(0, 1, (n, features)).astype(np.float32) for n in sizes]
    return coords, values


def test_point_features_are_values_then_fourier_features_of_coordinates():
    coords, values = random_point_sets([5, 3])
    batch = pad_point_sets(coords, values)
    assert batch["coords"].shape == (2, 5, 2) and batch["features"].shape == (2, 5, 1)
    assert batch["pad_mask"].tolist() == [[False] * 5, [False] * 3 + [True] * 2]
    features = PointFeatures(2, 1, num_bands=3, max_resolution=(16, 8))(batch)
    np.testing.assert_array_equal(features[1, :3, :1].numpy(), values[1])
    np.testing.assert_allclose(features[1, :3, 1:].numpy(), numpy_fourier_at(coords[1], 3, (16, 8)), atol=1e-6)
    with pytest.raises(ValueError, match="a set of 5 points does not fit num_points=4"):
        pad_point_sets(coords, values, num_points=4)


def test_padded_points_have_exactly_no_effect_on_any_output():
    """Per-point outputs (queries from each point) and a set-level output, with padding holding zeros or
    garbage: bit-identical; and each set decoded alone, unpadded, gives the same outputs."""
    points = PointFeatures(2, 1, num_bands=4)
    for queries, per_point in ((InputQueries(points, 8), True), (LearnedQueries(8), False)):
        model = kit_model(TokenAdapter(points, ENCODER.input_channels), queries, 8)
        coords, values = random_point_sets([7, 4, 2])
        batch = pad_point_sets(coords, values)
        garbage = {k: v.clone() for k, v in batch.items()}
        pad = garbage["pad_mask"]
        garbage["coords"][pad] = torch.randn(int(pad.sum()), 2) * 100
        garbage["features"][pad] = torch.randn(int(pad.sum()), 1) * 100
        with torch.no_grad():
            clean = model("kit", {"inputs": batch})
            dirty = model("kit", {"inputs": garbage})
            valid = ~pad[..., None].expand_as(clean) if per_point else torch.ones_like(clean, dtype=torch.bool)
            assert torch.equal(clean[valid], dirty[valid])
            for i, (c, v) in enumerate(zip(coords, values)):
                alone = model("kit", {"inputs": pad_point_sets([c], [v])})[0]
                expected = clean[i, :len(c)] if per_point else clean[i]
                torch.testing.assert_close(alone, expected, atol=1e-6, rtol=1e-5)


def test_a_point_set_without_coordinates_gets_one_line():
    coords, values = random_point_sets([3])
    batch = pad_point_sets(coords, values)
    check_points("digit_points", batch, coord_dims=2, feature_channels=1)
    with pytest.raises(TaskInputError, match=r"^task 'digit_points' takes point sets \{coords: \(B, N, 2\), "
                                             r"features: \(B, N, 1\), pad_mask: \(B, N\) bool\}, got \{features: "
                                             r"\(1, 3, 1\) float32, pad_mask: \(1, 3\) bool\} \(no coordinates\)$"):
        check_points("digit_points", {"features": batch["features"], "pad_mask": batch["pad_mask"]}, 2, 1)
    with pytest.raises(TaskInputError, match="got \\{coords: \\(1, 3, 3\\)"):
        check_points("digit_points", {**batch, "coords": torch.zeros(1, 3, 3)}, 2, 1)


def test_multimodal_inputs_pad_each_modality_with_its_own_vector_then_concatenate_in_name_order():
    image = ImagePatches((4, 4), patch_size=2, num_bands=2)  # 4 tokens of 4 + 10 channels
    audio = WaveformPatches(12, samples_per_patch=3, num_bands=2)  # 4 tokens of 3 + 5 channels
    points = PointFeatures(2, 1, num_bands=1)  # 1 + 6 channels
    multimodal = MultimodalInputs({"image": image, "audio": audio, "points": points}, min_padding_size=2)
    assert multimodal.num_channels == 14 + 2
    coords, values = random_point_sets([3, 2])
    inputs = {"image": torch.randn(2, 4, 4), "audio": torch.randn(2, 12), "points": pad_point_sets(coords, values)}
    features = multimodal(inputs)
    sizes = multimodal.sizes(inputs)
    assert list(sizes.items()) == [("audio", 4), ("image", 4), ("points", 3)]
    expected = []
    for name, module in (("audio", audio), ("image", image), ("points", points)):
        own = module(inputs[name])
        pad = multimodal.padding[name].padding.detach()
        expected.append(torch.cat([own, pad.expand(2, own.shape[1], -1)], dim=-1))
    torch.testing.assert_close(features, torch.cat(expected, dim=1))
    mask = multimodal.pad_mask(inputs)
    assert mask.tolist()[1] == [False] * 8 + [False, False, True]
    parts = split_modalities(features, sizes)
    torch.testing.assert_close(parts["image"], expected[1])
    tokens, pad_mask = TokenAdapter(multimodal, 16)({"inputs": inputs})
    assert tokens.shape == (2, 11, 16) and torch.equal(pad_mask, mask)


def subset(num_queries, samples, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return torch.stack([draw_query_subset(num_queries, samples, rng) for _ in range(batch)])


@pytest.mark.parametrize("kind", ["fourier", "fourier_raw", "learned", "input", "learned_many"])
def test_subsampled_decoding_equals_full_decoding_at_the_sampled_queries(kind):
    images = torch.randn(2, 8, 8)
    patches = ImagePatches((8, 8), patch_size=1, num_bands=3)
    queries = {
        "fourier": GridQueries((8, 8), 12, "fourier", num_bands=3),
        "fourier_raw": GridQueries((8, 8), None, "fourier", num_bands=3),
        "learned": GridQueries((8, 8), 12, "learned"),
        "input": InputQueries(ImagePatches((8, 8), num_bands=3), 12),
        "learned_many": LearnedQueries(12, num_queries=64),
    }[kind]
    model = kit_model(TokenAdapter(patches, ENCODER.input_channels), queries, queries.num_channels)
    index = subset(64, 10)
    with torch.no_grad():
        full = model("kit", {"inputs": images})
        sampled = model("kit", {"inputs": images, "query_index": index})
    assert full.shape == (2, 64, 3) and sampled.shape == (2, 10, 3)
    torch.testing.assert_close(sampled, take_queries(full, index), atol=1e-6, rtol=1e-5)


def test_multimodal_queries_subsample_each_modality_and_split_back():
    image_queries = GridQueries((4, 4), 6, "fourier", num_bands=2)
    audio_queries = GridQueries((8,), 10, "learned")
    label = LearnedQueries(4)
    queries = MultimodalQueries({"image": image_queries, "audio": audio_queries, "label": label})
    assert queries.num_channels == 12
    inputs = {"image": torch.randn(2, 4, 4), "audio": torch.randn(2, 12)}
    adapter = TokenAdapter(MultimodalInputs({"image": ImagePatches((4, 4), num_bands=2),
                                             "audio": WaveformPatches(12, 3, num_bands=2)}), ENCODER.input_channels)
    model = kit_model(adapter, queries, queries.num_channels)
    index = {"image": subset(16, 5), "audio": subset(8, 3)}
    with torch.no_grad():
        full = model("kit", {"inputs": inputs})
        sampled = model("kit", {"inputs": inputs, "query_index": index})
    full_parts = split_modalities(full, queries.sizes({"inputs": inputs}))
    sampled_parts = split_modalities(sampled, queries.sizes({"inputs": inputs, "query_index": index}))
    assert {k: v.shape[1] for k, v in full_parts.items()} == {"audio": 8, "image": 16, "label": 1}
    assert {k: v.shape[1] for k, v in sampled_parts.items()} == {"audio": 3, "image": 5, "label": 1}
    for name in ("audio", "image"):
        torch.testing.assert_close(sampled_parts[name], take_queries(full_parts[name], index[name]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sampled_parts["label"], full_parts["label"], atol=1e-6, rtol=1e-5)


def test_draw_query_subset_is_distinct_sorted_and_seeded():
    a = draw_query_subset(100, 20, np.random.default_rng(3))
    assert a.tolist() == sorted(set(a.tolist())) and len(a) == 20
    assert torch.equal(a, draw_query_subset(100, 20, np.random.default_rng(3)))
    with pytest.raises(ValueError, match="cannot draw 5 of 4 output queries"):
        draw_query_subset(4, 5, np.random.default_rng(0))
