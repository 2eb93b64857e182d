"""Optical flow: two frames in, one flow vector (dx, dy) per pixel out, DeepMind's Perceiver IO flow network.

Each pixel becomes one token: the 3x3 patches around it in both frames (2 x 27 values, frames in
[-1, 1]) linearly mapped to `patch_channels` (64), followed by 2D Fourier features of its position
(`num_bands` per axis, frequencies up to `max_resolution` / 2): 64 + 258 = 322 channels with 64 bands.
The per-pixel output queries are those same features (`InputQueries` on the adapter's preprocessor, taken
from the adapter: computed once per step), so each query asks the latents about its own pixel's appearance
and place; the decoder's output goes through a Linear to 2 channels and is divided by `output_scale` (100,
as in the original network, so converted weights predict pixels).

With `model.input_channels` equal to the features' width (322 at DeepMind's settings) the features reach
the encoder unprojected, as in DeepMind's network, and `speed.grid_tokens` keeps their Fourier part per
axis for the encoder and the decoder alike; otherwise they are projected to the encoder's width.

Training decodes a random subset of `train_queries` pixels per pair (the DataModule draws them as
`query_index`); evaluation and inference decode every pixel. Loss and metrics are end-point errors over
pixels with ground truth.

    predictor.predict("optical_flow", frame1, frame2)   # (H, W, 3) uint8 each -> (H, W, 2) flow in pixels

Parameters (Hugging Face `PerceiverForOpticalFlow` in brackets): `adapter.preprocessor.project`
[input_preprocessor.conv_after_patches], the same module as `queries.preprocessor.project`;
`adapter.projection` only when the features are projected; `decoder.cross_attention`
[decoder.decoder.decoding_cross_attention]; `head` [decoder.decoder.final_layer].
`python -m perceiver_mt.convert hf deepmind/optical-flow-perceiver --out DIR` converts DeepMind's weights
into this task at their settings (perceiver_mt/convert/hf_flow.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection

from perceiver_mt.model import DecoderConfig
from perceiver_mt.modalities import QUERY_INDEX, GridPatches, InputQueries, TaskInputError, TokenAdapter, take_queries
from perceiver_mt.modalities.checks import describe
from perceiver_mt.task import Batch, Task
from perceiver_mt.tracking.media import Image, Images
from tasks.flow_metrics import EndPointError, ZeroFlowEndPointError, flow_to_rgb

PATCH = 3  # 3x3 patches, as DeepMind's network


@dataclass
class OpticalFlowOptions:
    image_size: list[int] = field(default_factory=lambda: [64, 96])  # (H, W) of the frames; the DataModule's too
    patch_channels: int = 64  # the patch pair's linear map (DeepMind: 64)
    num_bands: int = 64  # Fourier bands per axis (DeepMind: 64 -> 322 channels in all)
    max_resolution: list[int] | None = None  # Fourier frequencies up to this / 2; None = image_size (DeepMind)
    decoder_heads: int = 1
    # The decoder's query/key and value widths; None = the latent width (DeepMind's and Hugging Face's default
    # when the config's cross_attention_shape_for_attention is "kv"; "q" makes them the query width).
    decoder_qk_channels: int | None = None
    decoder_v_channels: int | None = None
    # Add each pixel's query (its own patch features) back after the decoder's attention, so the decoder's MLP
    # sees the pixel's appearance directly, not only through where it attends (DeepMind: off).
    query_residual: bool = False
    output_scale: float = 100.0  # decoder output / this = flow in pixels (DeepMind: 100)
    train_queries: int = 1024  # pixels decoded per training pair (subsampled decoding); 0 = all


def frame_patches(frames: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W, 3) uint8 frames -> (B, H * W, 54): both frames' 3x3 patches around each pixel.

    Values in [-1, 1], zero-padded at the border (TensorFlow's SAME). Channel order (frame, row, column,
    colour), the order of DeepMind's `extract_patches` and of Hugging Face's flow example.
    """
    B, T, H, W, C = frames.shape
    x = frames.float().div(127.5).sub(1.0).permute(0, 1, 4, 2, 3).reshape(B * T, C, H, W)
    patches = F.unfold(x, PATCH, padding=PATCH // 2)  # (B*T, C * 9, H * W), channels (colour, row, column)
    patches = patches.view(B, T, C, PATCH * PATCH, H * W).permute(0, 4, 1, 3, 2)  # (B, HW, T, 9, C)
    return patches.reshape(B, H * W, T * PATCH * PATCH * C)


class FramePairPatches(GridPatches):
    """(B, 2, H, W, 3) uint8 frame pairs -> per-pixel features (B, H * W, patch_channels + Fourier channels).

    A grid of H x W tokens (blocks of one pixel) whose content is `project(frame_patches(frames))`; the kit's
    `GridPatches` appends the 2D Fourier features (through `ConcatFourierPositions` when they reach the
    encoder unprojected, so the grid-token speedup applies).
    """

    def __init__(self, image_size: Sequence[int], patch_channels: int = 64, num_bands: int = 64,
                 max_resolution: Sequence[int] | None = None):
        super().__init__(tuple(image_size), (1, 1), patch_channels, "fourier", num_bands, max_resolution)
        self.project = nn.Linear(2 * PATCH * PATCH * 3, patch_channels)

    def content(self, frames: torch.Tensor) -> torch.Tensor:
        return self.project(frame_patches(frames))  # (B, H * W, patch_channels)


class FlowHead(nn.Linear):
    """Decoder output (B, S, C) -> flow (B, S, 2) in pixels: a Linear, divided by `output_scale`."""

    def __init__(self, channels: int, output_scale: float):
        super().__init__(channels, 2)
        self.output_scale = output_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) / self.output_scale


class OpticalFlowTask(Task):
    options_class = OpticalFlowOptions
    default_data = "optical_flow"
    # Frames are bytes; flow stays float32 (exact); query_index only in training records.
    shard_fields = {"inputs": "uint8", "target": "float32", "valid": "bool", "index": "int64"}

    def __init__(self, name: str, options: OpticalFlowOptions, encoder: Any):
        super().__init__(name, options, encoder)
        self.image_size = tuple(options.image_size)
        if len(self.image_size) != 2:
            raise ValueError(f"task {name!r}: image_size must be [H, W], got {options.image_size}")
        self._adapter: TokenAdapter | None = None  # the queries reuse its preprocessor and its features

    def build_adapter(self) -> TokenAdapter:
        o = self.options
        features = FramePairPatches(self.image_size, o.patch_channels, o.num_bands,
                                    tuple(o.max_resolution) if o.max_resolution else None)
        channels = self.encoder.input_channels
        self._adapter = TokenAdapter(features, channels, project=features.num_channels != channels)
        return self._adapter

    def adapter(self) -> TokenAdapter:
        return self._adapter if self._adapter is not None else self.build_adapter()

    def build_queries(self) -> nn.Module:
        adapter = self.adapter()
        return InputQueries(adapter.preprocessor, None, adapter=adapter)

    def decoder_config(self) -> DecoderConfig:
        o, latent = self.options, self.encoder.latent_channels
        qk = o.decoder_qk_channels or latent
        return DecoderConfig(query_channels=self.feature_channels, num_heads=o.decoder_heads, qk_channels=qk,
                             v_channels=o.decoder_v_channels or qk, query_residual=o.query_residual)

    @property
    def feature_channels(self) -> int:
        o = self.options
        return o.patch_channels + 2 * (2 * o.num_bands + 1)  # content + 2D Fourier (positions, sines, cosines)

    def build_head(self) -> nn.Module:
        return FlowHead(self.feature_channels, self.options.output_scale)

    def datamodule_defaults(self) -> dict[str, Any]:
        return {"image_size": list(self.image_size), "train_queries": self.options.train_queries}

    # --- objective ---------------------------------------------------------------------------------
    def decoded_truth(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Target flow (B, S, 2) and validity (B, S) at the decoded pixels."""
        B = len(batch["target"])
        index = batch.get(QUERY_INDEX)
        return take_queries(batch["target"].reshape(B, -1, 2), index), take_queries(batch["valid"].reshape(B, -1), index)

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        target, valid = self.decoded_truth(batch)
        errors = torch.linalg.vector_norm(outputs.float() - target, dim=-1)  # (B, S)
        return errors[valid].sum() / valid.sum().clamp(min=1)

    def loss_count(self, batch: Batch) -> torch.Tensor:
        return self.decoded_truth(batch)[1].sum()  # a mean over valid decoded pixels

    def build_metrics(self) -> MetricCollection:
        return MetricCollection({"epe": EndPointError(), "zero_flow_epe": ZeroFlowEndPointError()})

    def update_metrics(self, metrics: MetricCollection, outputs: torch.Tensor, batch: Batch) -> None:
        target, valid = self.decoded_truth(batch)
        metrics.update(outputs.detach(), target, valid)

    # --- checks and inference ----------------------------------------------------------------------
    def check_batch(self, batch: Batch) -> None:
        frames = batch["inputs"]
        H, W = self.image_size
        if not isinstance(frames, torch.Tensor) or frames.dim() != 5 or tuple(frames.shape[1:]) != (2, H, W, 3):
            raise TaskInputError(f"task {self.name!r} takes pairs of RGB frames of shape (B, 2, {H}, {W}, 3) "
                                 f"(two frames of {H} x {W}), got {describe(frames)}")

    def make_batch(self, frame1: Any, frame2: Any = None) -> Batch:
        """Two (H, W, 3) (or (B, H, W, 3)) uint8 frames of the same size -> a batch of pairs."""
        if frame2 is None:
            raise TaskInputError(f"task {self.name!r} takes two frames: predict({self.name!r}, frame1, frame2)")
        first, second = (torch.as_tensor(np.asarray(f)) for f in (frame1, frame2))
        if first.shape != second.shape:
            raise TaskInputError(f"task {self.name!r} takes two frames of the same size, got {tuple(first.shape)} "
                                 f"and {tuple(second.shape)}")
        if first.dim() == 3:
            first, second = first[None], second[None]
        return {"inputs": torch.stack([first, second], dim=1).to(torch.uint8)}  # (B, 2, H, W, 3)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        flow = outputs.reshape(len(outputs), *self.image_size, 2)  # (B, H, W, 2)
        return flow[0] if len(flow) == 1 else flow

    def log_media(self, outputs: torch.Tensor, batch: Batch, max_pairs: int = 4) -> dict[str, Any]:
        """Per pair: frame 1, the true flow and the predicted one as colour wheels (same brightness scale)."""
        if QUERY_INDEX in batch:
            return {}  # a training batch decodes only some pixels: nothing to draw
        H, W = self.image_size
        predicted = outputs.detach().float().cpu().reshape(-1, H, W, 2).numpy()
        truth = batch["target"].cpu().numpy()
        valid = batch["valid"].cpu().numpy()
        pictures = []
        for i in range(min(max_pairs, len(predicted))):
            top = float(np.linalg.norm(truth[i], axis=-1).max())
            shown_truth = flow_to_rgb(truth[i], top) * valid[i][..., None]
            epe = float(np.linalg.norm(predicted[i] - truth[i], axis=-1)[valid[i]].mean())
            pictures += [Image(batch["inputs"][i, 0].cpu().numpy(), caption=f"pair {i}: frame 1"),
                         Image(shown_truth.astype(np.uint8), caption="true flow (black: unknown)"),
                         Image(flow_to_rgb(predicted[i], top), caption=f"predicted, EPE {epe:.2f} px")]
        return {"flow": Images(pictures)}
