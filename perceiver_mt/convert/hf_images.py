"""Hugging Face's ImageNet Perceivers -> an `image_classification` task instance on the shared encoder.

    PerceiverForImageClassificationFourier          pixels + 2D Fourier (64 bands up to 224), unprojected: 261 ch
    PerceiverForImageClassificationConvProcessing   conv stem (224 -> 55 x 55) + 2D Fourier up to 56, unprojected
    PerceiverForImageClassificationLearned          per-pixel 1x1 conv || projected learned positions: 512 ch

The learned variant's two linear maps (the 1x1 convolution of the pixels, the projection of the position
vectors) act on separate channels and are concatenated, so they are one affine map of [pixels | position]
with a block-diagonal weight: the task's token projection holds exactly that. All three decode one learned
query with a single-head cross-attention and a linear layer to the classes.
"""

from __future__ import annotations

from typing import Any

import torch

from perceiver_mt.convert.hf_layers import ConversionError, StateMapper, copy_decoder_layer, copy_encoder, encoder_config

# HF's PerceiverImageProcessor normalises with ImageNet's statistics; the converted task does it inside the model.
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
DEFAULT_IMAGE_SIZE = (224, 224)  # the Fourier and conv variants take any size; DeepMind's weights saw 224 x 224
FOURIER_BANDS = 64
PREPROCESSOR = "perceiver.input_preprocessor"
DECODER = "perceiver.decoder.decoder"


def _classifier(mapper: StateMapper, config: Any, task: str) -> dict[str, Any]:
    """The decoder's learned query, cross-attention and final layer; returns the task options they imply."""
    mapper.copy(f"tasks.{task}.queries.queries", f"{DECODER}.output_position_encodings.position_embeddings")
    copy_decoder_layer(mapper, task, f"{DECODER}.decoding_cross_attention")
    mapper.copy_linear(f"tasks.{task}.head.1", f"{DECODER}.final_layer")
    query = mapper.hf_state[f"{DECODER}.decoding_cross_attention.attention.self.query.weight"]
    value = mapper.hf_state[f"{DECODER}.decoding_cross_attention.attention.self.value.weight"]
    labels = getattr(config, "id2label", None) or {}
    names = [str(labels[i]) for i in sorted(labels)] if len(labels) == config.num_labels else []
    return {"pixel_mean": IMAGENET_MEAN, "pixel_std": IMAGENET_STD, "query_channels": query.shape[1], "decoder_heads": 1, "decoder_qk_channels": query.shape[0],
            "decoder_v_channels": value.shape[0], "num_classes": config.num_labels, "class_names": names}


def _run(config: Any, task: str, input_channels: int, options: dict[str, Any]) -> dict[str, Any]:
    return {"model": encoder_config(config, input_channels),
            "tasks": {task: {"plugin": "image_classification", "options": options}}}


def _image_size(image_size: tuple[int, int] | None) -> list[int]:
    return list(image_size or DEFAULT_IMAGE_SIZE)


def convert_fourier(config: Any, state: dict[str, torch.Tensor], task: str = "imagenet",
                    image_size: tuple[int, int] | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    mapper = StateMapper(state, "PerceiverForImageClassificationFourier")
    copy_encoder(mapper, "perceiver.", config.num_self_attends_per_block)
    options = {"image_size": _image_size(image_size), "channels": 3, "prep": "pixels", "position": "fourier",
               "num_bands": FOURIER_BANDS, "max_resolution": [224, 224], "project_tokens": False,
               **_classifier(mapper, config, task)}
    return _run(config, task, 3 + 2 * (2 * FOURIER_BANDS + 1), options), mapper.finish()


def convert_conv(config: Any, state: dict[str, torch.Tensor], task: str = "imagenet",
                 image_size: tuple[int, int] | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    mapper = StateMapper(state, "PerceiverForImageClassificationConvProcessing")
    copy_encoder(mapper, "perceiver.", config.num_self_attends_per_block)
    stem = f"tasks.{task}.adapter.preprocessor.stem"
    conv = mapper.copy(f"{stem}.conv.weight", f"{PREPROCESSOR}.convnet.conv.weight")
    for part in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        mapper.copy(f"{stem}.batchnorm.{part}", f"{PREPROCESSOR}.convnet.batchnorm.{part}")
    options = {"image_size": _image_size(image_size), "channels": conv.shape[1], "prep": "conv",
               "conv_channels": conv.shape[0], "position": "fourier", "num_bands": FOURIER_BANDS,
               "max_resolution": [56, 56], "project_tokens": False, **_classifier(mapper, config, task)}
    return _run(config, task, conv.shape[0] + 2 * (2 * FOURIER_BANDS + 1), options), mapper.finish()


def convert_learned(config: Any, state: dict[str, torch.Tensor], task: str = "imagenet",
                    image_size: tuple[int, int] | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    mapper = StateMapper(state, "PerceiverForImageClassificationLearned")
    size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    if image_size is not None and tuple(image_size) != (size, size):
        raise ConversionError(f"PerceiverForImageClassificationLearned has one learned position per pixel of "
                              f"{size} x {size} images; it cannot take --image-size {image_size[0]} {image_size[1]}")
    copy_encoder(mapper, "perceiver.", config.num_self_attends_per_block)
    conv_weight = mapper.take(f"{PREPROCESSOR}.convnet_1x1.weight")  # (Cc, 3, 1, 1)
    conv_bias = mapper.take(f"{PREPROCESSOR}.convnet_1x1.bias")
    positions = mapper.copy(f"tasks.{task}.adapter.preprocessor.position.embedding",
                            f"{PREPROCESSOR}.position_embeddings.position_embeddings")  # (H * W, Cp)
    project_weight = mapper.take(f"{PREPROCESSOR}.positions_projection.weight")  # (Cq, Cp)
    project_bias = mapper.take(f"{PREPROCESSOR}.positions_projection.bias")
    content_out, channels = conv_weight.shape[:2]
    weight = torch.block_diag(conv_weight[:, :, 0, 0], project_weight)  # [pixels | position] -> [conv | projected]
    mapper.put(f"tasks.{task}.adapter.projection.weight", weight)
    mapper.put(f"tasks.{task}.adapter.projection.bias", torch.cat([conv_bias, project_bias]))
    options = {"image_size": [size, size], "channels": channels, "prep": "pixels", "position": "learned",
               "learned_channels": positions.shape[1], "project_tokens": True, **_classifier(mapper, config, task)}
    return _run(config, task, weight.shape[0], options), mapper.finish()
