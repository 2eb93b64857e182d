"""Hugging Face's `PerceiverForOpticalFlow` (DeepMind's flow network) -> an `optical_flow` task instance.

HF's model takes the 3x3 patches of both frames, (B, 2, 27, H, W), the 27 values per pixel ordered (row,
column, colour) as DeepMind's `extract_patches`; it builds them into 54-channel tokens (frame, row, column,
colour), maps them with `conv_after_patches` (a Linear to 64 channels), appends 2D Fourier features of the
pixel grid (64 bands, frequencies up to `train_size` / 2) and feeds those 322 channels to the encoder
unprojected; the decoder's queries are the same features, its output goes through `final_layer` and is
divided by 100 (`rescale_factor`), then reshaped to `train_size`. The `optical_flow` task is that network
with the patch extraction inside (frames in, as uint8, scaled to [-1, 1] and zero-padded at the border as
DeepMind's example does), so the converted task's options are:

    image_size = max_resolution = train_size, patch_channels = 64, num_bands = 64, output_scale = 100,
    query_residual = False, one decoder head, decoder q/k and v widths from the checkpoint's shapes,
    and the encoder's input_channels = 64 + 2 * (2 * 64 + 1) = 322, so the features reach it unprojected.

Where HF and DeepMind's JAX network differ, the conversion follows HF (see docs/pretrained.md): exact GELU in
every MLP (DeepMind's uses the tanh approximation), and frames of exactly `train_size` (DeepMind's example
tiles larger frames into overlapping windows of that size; HF's model, and this task, take one window).
"""

from __future__ import annotations

from typing import Any

import torch

from perceiver_mt.convert.hf_layers import ConversionError, StateMapper, copy_decoder_layer, copy_encoder, encoder_config

# Fixed in transformers' PerceiverForOpticalFlow, not read from its config.
FLOW_BANDS = 64
RESCALE_FACTOR = 100.0
DECODER_HEADS = 1
PATCH_PAIR_VALUES = 2 * 3 * 3 * 3  # both frames' 3x3 RGB patches
PREPROCESSOR = "perceiver.input_preprocessor"
DECODER = "perceiver.decoder.decoder"


def train_size(config: Any) -> list[int]:
    size = config.train_size
    size = [size, size] if isinstance(size, int) else list(size)
    if len(size) != 2:
        raise ConversionError(f"PerceiverForOpticalFlow's train_size must be [H, W], got {config.train_size}")
    return [int(s) for s in size]


def convert_optical_flow(config: Any, state: dict[str, torch.Tensor], task: str = "optical_flow",
                         ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    mapper = StateMapper(state, "PerceiverForOpticalFlow")
    copy_encoder(mapper, "perceiver.", config.num_self_attends_per_block)
    weight = mapper.take(f"{PREPROCESSOR}.conv_after_patches.weight")  # (patch_channels, 54)
    bias = mapper.take(f"{PREPROCESSOR}.conv_after_patches.bias")
    if weight.dim() != 2 or weight.shape[1] != PATCH_PAIR_VALUES:
        raise ConversionError(f"PerceiverForOpticalFlow's conv_after_patches maps {PATCH_PAIR_VALUES} patch values "
                              f"(two frames' 3x3 RGB patches); this checkpoint's weight is {tuple(weight.shape)}")
    for part in ("adapter", "queries"):  # one module in our task, reached from both (state_dict names it twice)
        mapper.put(f"tasks.{task}.{part}.preprocessor.project.weight", weight)
        mapper.put(f"tasks.{task}.{part}.preprocessor.project.bias", bias)
    hf_layer = f"{DECODER}.decoding_cross_attention"
    copy_decoder_layer(mapper, task, hf_layer)
    mapper.copy_linear(f"tasks.{task}.head", f"{DECODER}.final_layer")
    query = state[f"{hf_layer}.attention.self.query.weight"]  # (qk, query width)
    value = state[f"{hf_layer}.attention.self.value.weight"]  # (v, latent width)
    size = train_size(config)
    patch_channels = weight.shape[0]
    options = {"image_size": size, "max_resolution": size, "patch_channels": patch_channels,
               "num_bands": FLOW_BANDS, "decoder_heads": DECODER_HEADS, "decoder_qk_channels": query.shape[0],
               "decoder_v_channels": value.shape[0], "query_residual": False, "output_scale": RESCALE_FACTOR}
    features = patch_channels + 2 * (2 * FLOW_BANDS + 1)  # content + 2D Fourier: the encoder's input, unprojected
    if query.shape[1] != features:
        raise ConversionError(f"PerceiverForOpticalFlow's decoder queries are {query.shape[1]} wide; its features "
                              f"are {features} ({patch_channels} patch channels + 2D Fourier of {FLOW_BANDS} bands)")
    run = {"model": encoder_config(config, features), "tasks": {task: {"plugin": "optical_flow", "options": options}}}
    return run, mapper.finish()
