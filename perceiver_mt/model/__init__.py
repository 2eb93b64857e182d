"""Perceiver IO in pure PyTorch."""

from perceiver_mt.model.grid_tokens import GridTokens
from perceiver_mt.model.multitask import MultiTaskPerceiver, TaskModel
from perceiver_mt.model.perceiver import (
    DecoderConfig,
    EncoderConfig,
    PerceiverDecoder,
    PerceiverEncoder,
    compile_latent_blocks,
)
from perceiver_mt.model.position import (
    FourierPositionEncoding,
    LearnedPositionEncoding,
    fourier_channels,
    fourier_features,
    linear_positions,
)

__all__ = [
    "DecoderConfig", "EncoderConfig", "FourierPositionEncoding", "GridTokens", "LearnedPositionEncoding",
    "MultiTaskPerceiver",
    "PerceiverDecoder", "PerceiverEncoder", "TaskModel", "compile_latent_blocks", "fourier_channels",
    "fourier_features", "linear_positions",
]
