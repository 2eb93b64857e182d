"""Perceiver IO in pure PyTorch: the reference model. Faster ways to compute it: `perceiver_mt.speed`."""

from perceiver_mt.model.multitask import MultiTaskPerceiver, TaskModel
from perceiver_mt.model.perceiver import DecoderConfig, EncoderConfig, PerceiverDecoder, PerceiverEncoder
from perceiver_mt.model.position import (
    ConcatFourierPositions,
    FourierPositionEncoding,
    LearnedPositionEncoding,
    fourier_channels,
    fourier_features,
    linear_positions,
)

__all__ = [
    "ConcatFourierPositions", "DecoderConfig", "EncoderConfig", "FourierPositionEncoding", "LearnedPositionEncoding",
    "MultiTaskPerceiver", "PerceiverDecoder", "PerceiverEncoder", "TaskModel", "fourier_channels", "fourier_features",
    "linear_positions",
]
