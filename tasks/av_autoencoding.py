"""Audio-video autoencoding: a window of video and its audio in, both reconstructed from one latent array.

DeepMind's Kinetics autoencoding scheme (Perceiver IO, section 4.3) at CPU size. Inputs: video
(T x H x W RGB, k x k patches per token + 3D Fourier features) and mono 48 kHz audio (16-sample patches
+ 1D Fourier features), each padded to a common width with a trainable per-modality vector and
concatenated. Outputs: one query per video pixel (3D Fourier features of its place) and one per audio
patch (1D Fourier), padded the same way; the decoder reads every query from the latents (queries carry
positions only, so everything about the content passes through the latents), and per-modality linear
maps give RGB per pixel and 16 samples per patch. Training decodes a random subset of each modality's
queries (`train_video_queries`, `train_audio_queries`); evaluation decodes all.

Metrics per modality: PSNR of the reconstruction and of predicting the evaluated data's mean (the
baseline), both in the data's own units (pixels in [0, 1], samples in [-1, 1]; peak 1).

    predictor.predict("av_autoencoding", video, audio)   # (T, H, W, 3) uint8, (S,) at 48 kHz -> same shapes
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection

from perceiver_mt.model import DecoderConfig
from perceiver_mt.task import Batch, Task
from perceiver_mt.tracking.media import Audio, Image, Images
from tasks.av_parts import (
    AudioFeatures, GridFourier, MeanPredictionPSNR, ModalityPadding, ReconstructionPSNR, VideoFeatures, padded_width,
)

QUERY_INDEX = "query_index"  # {"audio": (B, Sa), "video": (B, Sv)} decoded this step; absent = all
MODALITIES = ("audio", "video")  # sorted: the order of tokens, queries and outputs


@dataclass
class AVAutoencodingOptions:
    frames: int = 8  # video frames per window
    image_size: list[int] = field(default_factory=lambda: [48, 64])  # (H, W)
    patch_size: int = 4  # video tokens are patch x patch pixels (DeepMind: 4)
    temporal_patch: int = 1  # frames per video token (DeepMind: 1)
    video_bands: int = 8  # Fourier bands per video axis (inputs and queries)
    sample_rate: int = 48_000  # audio must be at this rate
    samples_per_frame: int = 2002  # audio samples per video frame (48 kHz at 23.976 fps)
    samples_per_patch: int = 16  # audio tokens and outputs are this many samples (DeepMind: 16)
    audio_bands: int = 32  # Fourier bands of the audio patch index
    audio_gain: float = 40.0  # audio is scaled by this inside the model (about unit variance for the clip)
    min_padding: int = 4  # channels every modality pads with its own vector (DeepMind: 4)
    video_loss_weight: float = 4.0  # video MSE (values in [-1, 1]) weight against audio's (scaled by the gain)
    train_video_queries: int = 2048  # video pixels decoded per training window; 0 = all
    train_audio_queries: int = 256  # audio patches decoded per training window; 0 = all

    @property
    def audio_samples(self) -> int:
        return self.frames * self.samples_per_frame


class AVInputs(nn.Module):
    """{"audio": (B, S), "video": (B, T, H, W, 3)} -> tokens (B, S/p + T H W / (t k k), channels)."""

    def __init__(self, o: AVAutoencodingOptions, channels: int):
        super().__init__()
        self.features = nn.ModuleDict({
            "audio": AudioFeatures(o.audio_samples, o.samples_per_patch, o.audio_bands, o.audio_gain),
            "video": VideoFeatures(o.frames, o.image_size, o.patch_size, o.temporal_patch, o.video_bands),
        })
        width = padded_width([f.num_channels for f in self.features.values()], o.min_padding)
        self.padding = nn.ModuleDict({m: ModalityPadding(f.num_channels, width) for m, f in self.features.items()})
        self.project = nn.Linear(width, channels) if width != channels else None

    def forward(self, batch: Batch) -> torch.Tensor:
        tokens = torch.cat([self.padding[m](self.features[m](batch["inputs"][m])) for m in MODALITIES], dim=1)
        return tokens if self.project is None else self.project(tokens)


class AVQueries(nn.Module):
    """One query per audio patch, then one per video pixel (or the subsets in `query_index`): position features
    padded per modality to a common width."""

    def __init__(self, o: AVAutoencodingOptions):
        super().__init__()
        H, W = o.image_size
        self.positions = nn.ModuleDict({
            "audio": GridFourier((o.audio_samples // o.samples_per_patch,), o.audio_bands),
            "video": GridFourier((o.frames, H, W), o.video_bands),
        })
        self.width = padded_width([p.num_channels for p in self.positions.values()], o.min_padding)
        self.padding = nn.ModuleDict({m: ModalityPadding(p.num_channels, self.width) for m, p in self.positions.items()})

    def forward(self, batch: Batch) -> torch.Tensor:
        index = batch.get(QUERY_INDEX) or {}
        B = len(batch["inputs"]["video"])
        return torch.cat([self.padding[m](self.positions[m](B, index.get(m))) for m in MODALITIES], dim=1)


class AVHeads(nn.Module):
    """Decoder output (B, O, C) -> (B, O, p + 3): each modality's linear map on every query; the task keeps
    the audio channels of audio queries and the RGB channels of video queries (cheap: a few channels)."""

    def __init__(self, channels: int, samples_per_patch: int):
        super().__init__()
        self.audio = nn.Linear(channels, samples_per_patch)
        self.video = nn.Linear(channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.audio(x), self.video(x)], dim=-1)


class AVAutoencodingTask(Task):
    options_class = AVAutoencodingOptions
    default_data = "megamind"
    shard_fields = {"inputs.video": "uint8", "inputs.audio": "float32", "index": "int64"}

    def __init__(self, name: str, options: AVAutoencodingOptions, encoder: Any):
        super().__init__(name, options, encoder)
        o = options
        H, W = o.image_size
        if o.audio_samples % o.samples_per_patch:
            raise ValueError(f"task {name!r}: {o.frames} frames of {o.samples_per_frame} audio samples do not split "
                             f"into patches of {o.samples_per_patch}; change frames or samples_per_patch")
        if H % o.patch_size or W % o.patch_size or o.frames % o.temporal_patch:
            raise ValueError(f"task {name!r}: {o.frames} x {H} x {W} video does not split into {o.temporal_patch} x "
                             f"{o.patch_size} x {o.patch_size} patches")

    def build_adapter(self) -> nn.Module:
        return AVInputs(self.options, self.encoder.input_channels)

    def build_queries(self) -> nn.Module:
        return AVQueries(self.options)

    def decoder_config(self) -> DecoderConfig:
        latent = self.encoder.latent_channels
        return DecoderConfig(query_channels=AVQueries(self.options).width, qk_channels=latent, v_channels=latent,
                             query_residual=False)

    def build_head(self) -> nn.Module:
        return AVHeads(self.decoder_config().query_channels, self.options.samples_per_patch)

    def datamodule_defaults(self) -> dict[str, Any]:
        o = self.options
        return {"frames": o.frames, "image_size": list(o.image_size), "samples_per_frame": o.samples_per_frame,
                "samples_per_patch": o.samples_per_patch, "train_video_queries": o.train_video_queries,
                "train_audio_queries": o.train_audio_queries}

    # --- objective ---------------------------------------------------------------------------------
    def split(self, outputs: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        """Model outputs -> {"audio": (B, Sa, p) gain-scaled samples, "video": (B, Sv, 3) in [-1, 1]}."""
        p = self.options.samples_per_patch
        audio_queries = self.decoded(batch, "audio").shape[1]
        return {"audio": outputs[:, :audio_queries, :p], "video": outputs[:, audio_queries:, p:]}

    def decoded(self, batch: Batch, modality: str) -> torch.Tensor:
        """The true values at the decoded queries, in the model's units (as `split` gives the predictions)."""
        inputs = batch["inputs"][modality]
        B = len(inputs)
        if modality == "audio":
            values = inputs.float().mul(self.options.audio_gain).reshape(B, -1, self.options.samples_per_patch)
        else:
            values = inputs.float().div(127.5).sub(1.0).reshape(B, -1, 3)  # (B, T H W, 3), row-major pixels
        index = (batch.get(QUERY_INDEX) or {}).get(modality)
        if index is None:
            return values
        return torch.gather(values, 1, index.unsqueeze(-1).expand(*index.shape, values.shape[-1]))

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        predicted = self.split(outputs, batch)
        audio = F.mse_loss(predicted["audio"].float(), self.decoded(batch, "audio"))
        video = F.mse_loss(predicted["video"].float(), self.decoded(batch, "video"))
        return audio + self.options.video_loss_weight * video

    def build_metrics(self) -> MetricCollection:
        return MetricCollection({
            "psnr_video": ReconstructionPSNR(), "baseline_psnr_video": MeanPredictionPSNR(channels=3),
            "psnr_audio": ReconstructionPSNR(), "baseline_psnr_audio": MeanPredictionPSNR(channels=1),
        })

    def update_metrics(self, metrics: MetricCollection, outputs: torch.Tensor, batch: Batch) -> None:
        predicted = self.split(outputs.detach(), batch)
        for modality in MODALITIES:
            pred, true = self.natural_units(predicted[modality].float(), modality), self.natural_units(
                self.decoded(batch, modality), modality)
            for name, metric in metrics.items(keep_base=True):
                if name.endswith(modality):
                    metric.update(pred, true)

    def natural_units(self, values: torch.Tensor, modality: str) -> torch.Tensor:
        """Model units -> the data's own: pixels in [0, 1] (B, S, 3), samples in [-1, 1] (B, S * p, 1)."""
        if modality == "audio":
            return (values / self.options.audio_gain).reshape(len(values), -1, 1)
        return (values + 1.0) / 2.0

    # --- checks and inference ----------------------------------------------------------------------
    def check_batch(self, batch: Batch) -> None:
        o = self.options
        H, W = o.image_size
        inputs = batch.get("inputs")
        if not isinstance(inputs, dict) or set(inputs) != set(MODALITIES):
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(f"task {self.name!r} takes inputs {{'video', 'audio'}}, got {got}")
        video, audio = inputs["video"], inputs["audio"]
        if video.dim() != 5 or tuple(video.shape[2:]) != (H, W, 3):
            raise ValueError(f"task {self.name!r} takes video of shape (B, {o.frames}, {H}, {W}, 3), "
                             f"got {tuple(video.shape)}")
        if video.shape[1] != o.frames or o.frames % o.temporal_patch:
            raise ValueError(f"task {self.name!r} takes windows of {o.frames} frames (a multiple of its temporal "
                             f"patch {o.temporal_patch}), got {video.shape[1]}")
        if audio.dim() != 2 or audio.shape[1] != o.audio_samples:
            raise ValueError(f"task {self.name!r} takes mono audio at {o.sample_rate} Hz, {o.samples_per_frame} "
                             f"samples per frame: (B, {o.audio_samples}), got {tuple(audio.shape)}")

    def make_batch(self, video: Any, audio: Any = None, sample_rate: int | None = None) -> Batch:
        """One window: video (T, H, W, 3) uint8 and mono audio (S,) in [-1, 1] at the task's rate."""
        o = self.options
        if audio is None:
            raise ValueError(f"task {self.name!r} takes video and audio: predict({self.name!r}, video, audio)")
        if sample_rate is not None and sample_rate != o.sample_rate:
            raise ValueError(f"task {self.name!r} takes audio at {o.sample_rate} Hz, got {sample_rate} Hz: "
                             "resample it first")
        video = torch.as_tensor(np.asarray(video), dtype=torch.uint8)
        audio = torch.as_tensor(np.asarray(audio), dtype=torch.float32)
        return {"inputs": {"video": video[None] if video.dim() == 4 else video,
                           "audio": audio[None] if audio.dim() == 1 else audio}}

    def predict(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"video": (B, T, H, W, 3) uint8, "audio": (B, S) float32}; without the batch axis for one window."""
        o = self.options
        B = len(outputs)
        p = o.samples_per_patch
        audio_queries = o.audio_samples // p
        audio = (outputs[:, :audio_queries, :p] / o.audio_gain).reshape(B, -1)
        video = ((outputs[:, audio_queries:, p:] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        video = video.reshape(B, o.frames, *o.image_size, 3)
        return {"video": video[0], "audio": audio[0]} if B == 1 else {"video": video, "audio": audio}

    def log_media(self, outputs: torch.Tensor, batch: Batch, max_frames: int = 4) -> dict[str, Any]:
        """The first window: some frames beside their reconstructions, and the audio, original and rebuilt."""
        if QUERY_INDEX in batch:
            return {}  # a training batch decodes only some queries
        rebuilt = self.predict(outputs.detach().float().cpu()[:1])
        video = batch["inputs"]["video"][0].cpu().numpy()
        step = max(1, self.options.frames // max_frames)
        pictures = []
        for t in range(0, self.options.frames, step):
            pictures += [Image(video[t], caption=f"frame {t}"),
                         Image(rebuilt["video"][t].numpy(), caption=f"frame {t} rebuilt")]
        audio = batch["inputs"]["audio"][0].cpu().numpy()
        rate = self.options.sample_rate
        return {"frames": Images(pictures),
                "audio": Audio(np.clip(audio, -1, 1), rate, caption="original"),
                "audio_rebuilt": Audio(np.clip(rebuilt["audio"].numpy(), -1, 1), rate, caption="rebuilt")}
