"""Fourier features against an independent NumPy transcription of DeepMind's formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perceiver_mt.model import FourierPositionEncoding, LearnedPositionEncoding, fourier_channels, fourier_features
from perceiver_mt.model.position import linear_positions
from references import numpy_fourier


@pytest.mark.parametrize("index_dims,num_bands,max_res,concat_pos,sine_only", [
    ((8, 8), 4, (8, 8), True, False),
    ((5, 7), 3, (20, 30), True, False),
    ((16,), 6, (16,), False, False),
    ((4, 3, 2), 2, (4, 3, 2), True, True),
])
def test_fourier_features_match_the_formula(index_dims, num_bands, max_res, concat_pos, sine_only):
    encoding = FourierPositionEncoding(index_dims, num_bands, max_res, concat_pos, sine_only)
    expected = numpy_fourier(index_dims, num_bands, max_res, concat_pos, sine_only)
    np.testing.assert_allclose(encoding.features.numpy(), expected, atol=1e-6)
    assert encoding.num_channels == fourier_channels(len(index_dims), num_bands, concat_pos, sine_only)
    assert encoding(3).shape == (3, int(np.prod(index_dims)), encoding.num_channels)


def test_positions_are_row_major():
    pos = linear_positions((2, 3))
    assert pos.tolist() == [[-1, -1], [-1, 0], [-1, 1], [1, -1], [1, 0], [1, 1]]


def test_features_of_a_subsample_equal_rows_of_the_full_grid():
    full = FourierPositionEncoding((6, 6), 4).features
    rows = torch.tensor([0, 7, 35])
    torch.testing.assert_close(fourier_features(linear_positions((6, 6))[rows], 4, (6, 6)), full[rows])


def test_learned_position_encoding_is_trainable():
    encoding = LearnedPositionEncoding(10, 4)
    assert encoding(2).shape == (2, 10, 4) and encoding.embedding.requires_grad


def test_uncached_fourier_features_are_the_cached_ones_and_follow_the_module():
    cached = FourierPositionEncoding((5, 7), 4)
    uncached = FourierPositionEncoding((5, 7), 4, cached=False)
    assert uncached.num_channels == cached.num_channels and uncached.features.numel() == 0
    assert torch.equal(uncached(3), cached(3)) and uncached(3).shape == (3, 35, cached.num_channels)
    assert uncached.double()(1).dtype == torch.float64  # the stored positions move with the module
