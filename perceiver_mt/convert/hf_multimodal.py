"""Hugging Face's `PerceiverForMultimodalAutoencoding` -> an `av_autoencoding` task instance on the shared encoder.

DeepMind's Kinetics autoencoder: audio patches + 1D Fourier (192 bands up to the window's sample count), video
4 x 4 patches + 3D Fourier (32 bands up to (frames, image_size, image_size)) and a label that is always masked,
each padded to one width with its own vector (4 channels at least); the queries are Fourier features of each
audio patch's and each pixel's place and one learned label query, padded the same way (2 channels at least);
one decoder reads them all, then one shared Linear and one Linear per modality.

Where Hugging Face's conventions differ from DeepMind's, the converted task follows Hugging Face's:
- queries sit at -1 + 2 i / n along an axis of n (`query_positions: index`): HF builds them that way for
  `subsampled_output_points`, and its model does not decode without them;
- the label's input is the whole trained mask token (`input_preprocessor.mask.label`); the audio and video
  mask tokens, applied with probability 0, are never used and are not converted;
- the video is read as pixels in [0, 1] (the converted task divides uint8 frames by 255) and the audio as
  the raw samples, as HF's model takes them.

Fourier features are computed in float64 here and in float32 by HF; at DeepMind's size (audio frequencies up to
15,360) HF's rounding of the highest bands may move its outputs beyond 1e-4 of ours (not measured; the tests
compare small models).
"""

from __future__ import annotations

from typing import Any

import torch

from perceiver_mt.convert.hf_layers import (
    ConversionError, StateMapper, copy_decoder_layer, copy_encoder, decoder_config, encoder_config,
)

ARCHITECTURE = "PerceiverForMultimodalAutoencoding"
AUDIO_BANDS, IMAGE_BANDS = 192, 32  # fixed by HF's model
PATCH_SIZE, TEMPORAL_PATCH = 4, 1
INPUT_PADDING, QUERY_PADDING = 4, 2  # minimum padding channels of the inputs and of the queries
TRAIN_IMAGE_QUERIES, TRAIN_AUDIO_QUERIES = 2048, 256  # defaults for fine-tuning: subsampled decoding per window
PREPROCESSOR = "perceiver.input_preprocessor"
DECODER = "perceiver.decoder"
POSTPROCESSOR = "perceiver.output_postprocessor.modalities"


def _fourier_width(dims: int, bands: int) -> int:
    return dims * (2 * bands + 1)


def _options(config: Any, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The task options HF's config implies, checked against the checkpoint's shapes."""
    frames, samples_per_frame, per_patch = config.num_frames, config.audio_samples_per_frame, config.samples_per_patch
    output_shape = list(config.output_shape)
    if len(output_shape) != 4 or output_shape[1] != frames:
        raise ConversionError(f"{ARCHITECTURE} config has output_shape={output_shape}: expected (batch, "
                              f"num_frames={frames}, height, width)")
    height, width = output_shape[2:]
    if (frames * samples_per_frame) % per_patch or height % PATCH_SIZE or width % PATCH_SIZE:
        raise ConversionError(f"{ARCHITECTURE} config does not split into patches: {frames} x {samples_per_frame} "
                              f"audio samples by {per_patch}, {height} x {width} frames by {PATCH_SIZE}")
    size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    label_channels = config._label_trainable_num_channels
    options = {
        "frames": frames, "image_size": [height, width], "patch_size": PATCH_SIZE, "temporal_patch": TEMPORAL_PATCH,
        "image_bands": IMAGE_BANDS, "image_max_resolution": [frames, size, size],
        "samples_per_frame": samples_per_frame, "samples_per_patch": per_patch,
        "audio_bands": AUDIO_BANDS, "audio_max_resolution": frames * samples_per_frame, "audio_gain": 1.0,
        "num_labels": config.num_labels, "label_query_channels": label_channels,
        "output_channels": config.output_num_channels, "query_positions": "index",
        "train_image_queries": min(TRAIN_IMAGE_QUERIES, frames * height * width),
        "train_audio_queries": min(TRAIN_AUDIO_QUERIES, frames * samples_per_frame // per_patch),
    }
    # The widths the options imply must be the checkpoint's (a config edited apart from its weights fails here).
    widths = {"audio": per_patch + _fourier_width(1, AUDIO_BANDS),
              "image": PATCH_SIZE ** 2 * TEMPORAL_PATCH * 3 + _fourier_width(3, IMAGE_BANDS), "label": config.num_labels}
    input_width = max(widths.values()) + INPUT_PADDING
    query_width = max(_fourier_width(1, AUDIO_BANDS), _fourier_width(3, IMAGE_BANDS), label_channels) + QUERY_PADDING
    expected = {f"{PREPROCESSOR}.padding.{m}": (1, input_width - w) for m, w in widths.items()}
    expected[f"{PREPROCESSOR}.mask.label"] = (1, input_width)
    expected.update({f"{DECODER}.padding.audio": (1, query_width - _fourier_width(1, AUDIO_BANDS)),
                     f"{DECODER}.padding.image": (1, query_width - _fourier_width(3, IMAGE_BANDS)),
                     f"{DECODER}.padding.label": (1, query_width - label_channels),
                     f"{DECODER}.decoder.final_layer.weight": (config.output_num_channels, query_width),
                     f"{POSTPROCESSOR}.audio.classifier.weight": (per_patch, config.output_num_channels),
                     f"{POSTPROCESSOR}.label.classifier.weight": (config.num_labels, config.output_num_channels)})
    for key, shape in expected.items():
        got = tuple(state[key].shape) if key in state else None
        if got != shape:
            raise ConversionError(f"{ARCHITECTURE} checkpoint's {key} has shape {got}, but its config implies "
                                  f"{shape}: the config does not describe these weights")
    return options


def convert_multimodal_autoencoding(config: Any, state: dict[str, torch.Tensor], task: str = "av_autoencoding"
                                    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    mapper = StateMapper(state, ARCHITECTURE)
    options = _options(config, state)
    num_labels = options["num_labels"]
    copy_encoder(mapper, "perceiver.", config.num_self_attends_per_block)
    ours = f"tasks.{task}"
    for m in ("audio", "image"):
        mapper.put(f"{ours}.adapter.preprocessor.padding.{m}.padding", mapper.take(f"{PREPROCESSOR}.padding.{m}")[0])
    # The label is always masked: its token is the whole mask vector, our label "input" then its padding.
    mask = mapper.take(f"{PREPROCESSOR}.mask.label")[0]
    mapper.put(f"{ours}.adapter.preprocessor.preprocessors.label.mask", mask[:num_labels])
    mapper.put(f"{ours}.adapter.preprocessor.padding.label.padding", mask[num_labels:])
    mapper.take(f"{PREPROCESSOR}.padding.label")  # replaced by the mask token everywhere: never used
    for m in ("audio", "image"):  # mask tokens applied with probability 0: never used
        mapper.take(f"{PREPROCESSOR}.mask.{m}")
    for m in ("audio", "image", "label"):
        mapper.put(f"{ours}.queries.padding.{m}.padding", mapper.take(f"{DECODER}.padding.{m}")[0])
    mapper.put(f"{ours}.queries.queries.label.queries",
               mapper.take(f"{DECODER}.modalities.label.decoder.output_position_encodings.position_embeddings"))
    layer = f"{DECODER}.decoder.decoding_cross_attention"
    copy_decoder_layer(mapper, task, layer)
    decoder = decoder_config(mapper, layer, num_heads=1, query_residual=False, widening_factor=1)
    options.update(decoder_qk_channels=decoder["qk_channels"], decoder_v_channels=decoder["v_channels"])
    mapper.copy_linear(f"{ours}.head.final", f"{DECODER}.decoder.final_layer")
    for m in ("audio", "image", "label"):
        mapper.copy_linear(f"{ours}.head.modalities.{m}", f"{POSTPROCESSOR}.{m}.classifier")
    input_width = mask.shape[0]
    run = {"model": encoder_config(config, input_width),
           "tasks": {task: {"plugin": "av_autoencoding", "options": options}}}
    return run, mapper.finish()
