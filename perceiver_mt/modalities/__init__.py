"""The modality kit: building blocks that turn images, audio, video, text, point sets and several
modalities at once into encoder tokens, and build the output queries a task decodes.

Each piece documents its shapes and follows DeepMind's Perceiver IO preprocessing where one exists.
A task plugin composes them; see the README's "write your own task".
"""

from perceiver_mt.modalities.audio import (
    LogMelPatches, WaveformPatches, check_audio, fit_length, load_audio, log_frequency_filters, log_mel_spectrogram,
    mel_filters, resample,
)
from perceiver_mt.modalities.checks import TaskInputError, check_tensor, describe
from perceiver_mt.modalities.grid import GridPatches, depth_to_space, space_to_depth
from perceiver_mt.modalities.images import ImagePatches, check_images
from perceiver_mt.modalities.multimodal import MultimodalInputs, MultimodalQueries, split_modalities
from perceiver_mt.modalities.points import PointFeatures, check_points, pad_point_sets
from perceiver_mt.modalities.projection import FeatureProjection, TokenAdapter, batch_size_of
from perceiver_mt.modalities.queries import (
    QUERY_INDEX, GridQueries, InputQueries, LearnedQueries, draw_query_subset, take_queries,
)
from perceiver_mt.modalities.text import ByteAdapter, decode_bytes, encode_texts
from perceiver_mt.modalities.video import VideoPatches, check_video

__all__ = [
    "QUERY_INDEX", "ByteAdapter", "FeatureProjection", "GridPatches", "GridQueries", "ImagePatches", "InputQueries",
    "LearnedQueries", "LogMelPatches", "MultimodalInputs", "MultimodalQueries", "PointFeatures", "TaskInputError",
    "TokenAdapter", "VideoPatches", "WaveformPatches", "batch_size_of", "check_audio", "check_images", "check_points",
    "check_tensor", "check_video", "decode_bytes", "depth_to_space", "describe", "draw_query_subset", "encode_texts",
    "fit_length", "load_audio", "log_frequency_filters", "log_mel_spectrogram", "mel_filters", "pad_point_sets",
    "resample",
    "space_to_depth", "split_modalities", "take_queries",
]
