"""Audio-video autoencoding: a window of video and its audio in, both reconstructed from one latent array.

DeepMind's Kinetics autoencoder (Perceiver IO, section 4.3; Hugging Face's `PerceiverForMultimodalAutoencoding`)
at CPU size, built from the modality kit. Modalities in sorted name order, as Hugging Face names them:
"audio" (mono 48 kHz, `samples_per_patch` samples per token + 1D Fourier features of the patch index,
frequencies up to the window's sample count), "image" (the video frames: T x H x W RGB in [0, 1],
k x k patches per token + 3D Fourier features of the patch grid) and, with `num_labels` > 0, "label"
(always masked: the network predicts it). `MultimodalInputs` pads each modality to one width with its own
trainable vector and concatenates them. Queries: one per audio patch and one per video pixel (Fourier
features of their place only, so everything about the content passes through the latents) and one learned
label query, padded the same way by `MultimodalQueries`; one decoder reads them all, and `ModalityHeads`
maps each modality's outputs with a shared Linear and its own Linear: samples per patch, RGB per pixel,
label logits. Training decodes a random subset of each modality's queries (`train_image_queries`,
`train_audio_queries`); evaluation decodes all.

The loss is each modality's mean squared error divided by the variance of its target, per window
(`normalize_loss`; per window so that it is the same on any number of ranks): the fraction of that
modality's variance left unexplained, so quiet audio (RMS ~0.02)
weighs as much as pixels and both terms measure what PSNR above the mean prediction measures.

Metrics per modality: PSNR of the reconstruction and of predicting the evaluated data's mean (the
baseline), both in the data's own units (pixels in [0, 1], samples in [-1, 1]; peak 1).

    predictor.predict("av_autoencoding", video, audio)   # (T, H, W, 3) uint8, (S,) at 48 kHz -> same shapes

Parameters (Hugging Face in brackets, under `perceiver.`): `adapter.preprocessor.padding.<m>.padding`
[input_preprocessor.padding.<m>], `adapter.preprocessor.preprocessors.label.mask` + the label padding
[input_preprocessor.mask.label], `adapter.projection` only when the padded width is not the encoder's,
`queries.padding.<m>.padding` [decoder.padding.<m>], `queries.queries.label.table.queries`
[decoder.modalities.label.decoder.output_position_encodings.position_embeddings], `decoder.cross_attention`
[decoder.decoder.decoding_cross_attention], `head.final` [decoder.decoder.final_layer],
`head.modalities.<m>` [output_postprocessor.modalities.<m>.classifier].
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
from perceiver_mt.modalities import (
    QUERY_INDEX, GridQueries, LearnedQueries, MultimodalInputs, MultimodalQueries, TaskInputError, TokenAdapter,
    VideoPatches, WaveformPatches, take_queries,
)
from perceiver_mt.modalities.checks import describe
from perceiver_mt.task import Batch, Task
from perceiver_mt.tracking.media import Audio, Image, Images
from tasks.av_parts import MaskedLabel, MeanPredictionPSNR, ModalityHeads, ReconstructionPSNR, index_grid_queries

SIGNALS = ("audio", "image")  # the reconstructed modalities (Hugging Face's names: "image" holds the video)
QUERY_POSITIONS = ("grid", "index")


@dataclass
class AVAutoencodingOptions:
    frames: int = 8  # video frames per window
    image_size: list[int] = field(default_factory=lambda: [48, 64])  # (H, W)
    patch_size: int = 4  # video tokens are patch x patch pixels (DeepMind: 4)
    temporal_patch: int = 1  # frames per video token (DeepMind: 1)
    image_bands: int = 8  # Fourier bands per video axis, inputs and queries (DeepMind: 32)
    image_max_resolution: list[int] | None = None  # (T, H, W) Fourier resolution; None = the patch grid (DeepMind's)
    sample_rate: int = 48_000  # audio must be at this rate
    samples_per_frame: int = 2002  # audio samples per video frame (48 kHz at 23.976 fps; DeepMind: 1920)
    samples_per_patch: int = 16  # audio tokens and outputs are this many samples (DeepMind: 16)
    audio_bands: int = 32  # Fourier bands of the audio patch index (DeepMind: 192)
    audio_max_resolution: int | None = None  # None = the window's sample count (DeepMind's)
    audio_gain: float = 1.0  # samples are multiplied by this inside the model (DeepMind: 1)
    num_labels: int = 0  # > 0: a label modality, masked on input and predicted (DeepMind's Kinetics: 700)
    label_query_channels: int = 1024  # width of the learned label query (DeepMind: 1024)
    output_channels: int = 512  # the shared output Linear's width before each modality's own (DeepMind: 512)
    normalize_loss: bool = True  # each window's MSE / its target's variance, per modality; false: plain MSEs
    min_variance: float = 0.01  # floor of that variance (model units): a silent or flat window is not weighted up without bound
    image_loss_weight: float = 1.0
    audio_loss_weight: float = 1.0
    # Optimizer steps of the run (Task.step) that train the audio alone, the video's loss weighed 0. Each audio
    # query must find its own patch among many more video tokens, and every latent starts as an average in which
    # the patches' waveforms cancel: with the video's loss on from the start, the audio stays at the mean for
    # 4,000 steps; alone, it leaves the mean after ~700 (README, audio-video).
    audio_first_steps: int = 0
    train_image_queries: int = 2048  # video pixels decoded per training window; 0 = all
    train_audio_queries: int = 256  # audio patches decoded per training window; 0 = all
    # Where a query sits on its axis of n: "grid" = the grid's own positions, -1 + 2 i / (n - 1) (DeepMind's full
    # grid, and the inputs' positions); "index" = -1 + 2 i / n (Hugging Face's `subsampled_output_points`, the only
    # way its PerceiverForMultimodalAutoencoding decodes: what converted checkpoints use).
    query_positions: str = "grid"
    decoder_qk_channels: int | None = None  # the decoder's query/key width; None = the latents' (Hugging Face's)
    decoder_v_channels: int | None = None  # its value width; None = the query/key width
    decoder_query_gain: float = 1.0  # the decoder's query weights start this many times larger (DecoderConfig)

    @property
    def audio_samples(self) -> int:
        return self.frames * self.samples_per_frame


class AVAdapter(TokenAdapter):
    """`TokenAdapter` of the multimodal features, fed samples times `gain` and pixels in [0, 1]; the label's
    input is masked, so a batch without one gets a placeholder."""

    def __init__(self, preprocessor: MultimodalInputs, channels: int, gain: float):
        super().__init__(preprocessor, channels, project=preprocessor.num_channels != channels)
        self.gain = gain

    def forward(self, batch: Batch) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        inputs = batch["inputs"]
        scaled = {"audio": inputs["audio"].float() * self.gain, "image": inputs["image"].float() / 255.0}
        if "label" in self.preprocessor.modalities:
            scaled["label"] = inputs.get("label", torch.zeros(len(inputs["audio"]), dtype=torch.long))
        return super().forward({**batch, "inputs": scaled})


class AVAutoencodingTask(Task):
    options_class = AVAutoencodingOptions
    default_data = "megamind"
    shard_fields = {"inputs.image": "uint8", "inputs.audio": "float32", "index": "int64"}

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
        self.num_queries = {"audio": o.audio_samples // o.samples_per_patch, "image": o.frames * H * W}
        self.train_queries = {"audio": o.train_audio_queries or self.num_queries["audio"],
                              "image": o.train_image_queries or self.num_queries["image"]}
        for m in SIGNALS:
            if self.train_queries[m] > self.num_queries[m]:
                raise ValueError(f"task {name!r}: train_{m}_queries={self.train_queries[m]} is more than the "
                                 f"{self.num_queries[m]} {m} queries of a window")
        self.modalities = [*SIGNALS, "label"] if o.num_labels else list(SIGNALS)
        if o.query_positions not in QUERY_POSITIONS:
            raise ValueError(f"task {name!r}: query_positions={o.query_positions!r} is unknown; choose one of "
                             f"{', '.join(QUERY_POSITIONS)}")

    # --- model parts -------------------------------------------------------------------------------
    def patch_grid(self) -> tuple[int, int, int]:
        o = self.options
        return o.frames // o.temporal_patch, o.image_size[0] // o.patch_size, o.image_size[1] // o.patch_size

    def build_adapter(self) -> nn.Module:
        o = self.options
        image_resolution = tuple(o.image_max_resolution or self.patch_grid())
        audio_resolution = (o.audio_max_resolution or o.audio_samples,)
        preprocessors: dict[str, nn.Module] = {
            "audio": WaveformPatches(o.audio_samples, o.samples_per_patch, num_bands=o.audio_bands,
                                     max_resolution=audio_resolution),
            "image": VideoPatches((o.frames, *o.image_size), 3, o.patch_size, o.temporal_patch, num_bands=o.image_bands,
                                  max_resolution=image_resolution),
        }
        if o.num_labels:
            preprocessors["label"] = MaskedLabel(o.num_labels)
        return AVAdapter(MultimodalInputs(preprocessors, min_padding_size=4), self.encoder.input_channels, o.audio_gain)

    def build_queries(self) -> MultimodalQueries:
        o = self.options
        grid = GridQueries if o.query_positions == "grid" else index_grid_queries
        queries: dict[str, nn.Module] = {
            "audio": grid((self.num_queries["audio"],), None, num_bands=o.audio_bands,
                          max_resolution=(o.audio_max_resolution or o.audio_samples,)),
            "image": grid((o.frames, *o.image_size), None, num_bands=o.image_bands,
                          max_resolution=tuple(o.image_max_resolution or self.patch_grid())),
        }
        if o.num_labels:
            queries["label"] = LearnedQueries(o.label_query_channels)
        return MultimodalQueries(queries, min_padding_size=2)

    @property
    def query_channels(self) -> int:
        """The padded query width: the widest modality's queries + 2 (`MultimodalQueries`' padding)."""
        o = self.options
        widths = [2 * o.audio_bands + 1, 3 * (2 * o.image_bands + 1)]  # 1D and 3D Fourier features
        return max(widths + ([o.label_query_channels] if o.num_labels else [])) + 2

    def decoder_config(self) -> DecoderConfig:
        o = self.options
        qk = o.decoder_qk_channels or self.encoder.latent_channels  # Hugging Face's default: the latents' width
        return DecoderConfig(query_channels=self.query_channels, qk_channels=qk, v_channels=o.decoder_v_channels or qk,
                             query_residual=False, query_gain=o.decoder_query_gain)

    def build_head(self) -> nn.Module:
        o = self.options
        outputs = {"audio": o.samples_per_patch, "image": 3, **({"label": o.num_labels} if o.num_labels else {})}
        labels = {"label": 1} if o.num_labels else {}
        return ModalityHeads(self.query_channels, o.output_channels, outputs,
                             [{**self.num_queries, **labels}, {**self.train_queries, **labels}])

    def datamodule_defaults(self) -> dict[str, Any]:
        o = self.options
        return {"frames": o.frames, "image_size": list(o.image_size), "samples_per_frame": o.samples_per_frame,
                "samples_per_patch": o.samples_per_patch, "train_image_queries": o.train_image_queries,
                "train_audio_queries": o.train_audio_queries}

    # --- objective ---------------------------------------------------------------------------------
    def decoded_truth(self, batch: Batch, modality: str) -> torch.Tensor:
        """The true values at the decoded queries, in the model's units (as the head gives its predictions):
        audio (B, S_a, samples_per_patch) times the gain, pixels (B, S_i, 3) in [0, 1]."""
        inputs = batch["inputs"][modality]
        B = len(inputs)
        if modality == "audio":
            values = inputs.float().mul(self.options.audio_gain).reshape(B, -1, self.options.samples_per_patch)
        else:
            values = inputs.float().div(255.0).reshape(B, -1, 3)  # (B, T H W, 3), row-major pixels
        index = batch.get(QUERY_INDEX)
        return take_queries(values, index.get(modality) if index else None)

    def loss(self, outputs: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        o = self.options
        total = torch.zeros((), device=outputs["image"].device)
        image_weight = o.image_loss_weight if self.step >= o.audio_first_steps else 0.0
        for modality, weight in (("audio", o.audio_loss_weight), ("image", image_weight)):
            truth = self.decoded_truth(batch, modality)  # (B, O, C)
            window_axes = tuple(range(1, truth.dim()))
            error = (outputs[modality].float() - truth).square().mean(dim=window_axes)  # (B,)
            if o.normalize_loss:  # the fraction of each window's variance left unexplained
                error = error / truth.var(dim=window_axes, correction=0).clamp_min(o.min_variance)
            # A mean of per-window terms: the same under DDP/FSDP, which average the ranks' means.
            total = total + weight * error.mean()
        if "label" in outputs and "label" in batch:
            total = total + F.cross_entropy(outputs["label"][:, 0].float(), batch["label"])
        return total

    def build_metrics(self) -> MetricCollection:
        return MetricCollection({
            "psnr_image": ReconstructionPSNR(), "baseline_psnr_image": MeanPredictionPSNR(channels=3),
            "psnr_audio": ReconstructionPSNR(), "baseline_psnr_audio": MeanPredictionPSNR(channels=1),
        })

    def update_metrics(self, metrics: MetricCollection, outputs: dict[str, torch.Tensor], batch: Batch) -> None:
        for modality in SIGNALS:
            predicted = self.natural_units(outputs[modality].detach().float(), modality)
            truth = self.natural_units(self.decoded_truth(batch, modality), modality)
            for name, metric in metrics.items(keep_base=True):
                if name.endswith(modality):
                    metric.update(predicted, truth)

    def natural_units(self, values: torch.Tensor, modality: str) -> torch.Tensor:
        """Model units -> the data's own, one channel per value: samples in [-1, 1] (B, S * p, 1), pixels (B, S, 3)."""
        if modality == "audio":
            return (values / self.options.audio_gain).reshape(len(values), -1, 1)
        return values

    # --- checks and inference ----------------------------------------------------------------------
    def check_batch(self, batch: Batch) -> None:
        o = self.options
        H, W = o.image_size
        inputs = batch.get("inputs")
        if not isinstance(inputs, dict) or not set(SIGNALS) <= set(inputs):
            raise TaskInputError(f"task {self.name!r} takes inputs {{'audio', 'image'}} (the window's audio and "
                                 f"video frames), got {describe(inputs)}")
        video, audio = inputs["image"], inputs["audio"]
        if not isinstance(video, torch.Tensor) or video.dim() != 5 or tuple(video.shape[2:]) != (H, W, 3):
            raise TaskInputError(f"task {self.name!r} takes video of shape (B, {o.frames}, {H}, {W}, 3), "
                                 f"got {describe(video)}")
        if video.shape[1] != o.frames:
            raise TaskInputError(f"task {self.name!r} takes windows of {o.frames} frames (a multiple of its temporal "
                                 f"patch {o.temporal_patch}), got {video.shape[1]}")
        if not isinstance(audio, torch.Tensor) or audio.dim() != 2 or audio.shape[1] != o.audio_samples:
            raise TaskInputError(f"task {self.name!r} takes mono audio at {o.sample_rate} Hz, {o.samples_per_frame} "
                                 f"samples per frame: (B, {o.audio_samples}), got {describe(audio)}")
        index = batch.get(QUERY_INDEX)
        if index is not None:  # the heads tell the modalities apart by these counts
            for m in SIGNALS:
                if m not in index or index[m].shape[1] != self.train_queries[m]:
                    got = index[m].shape[1] if m in index else "none"
                    raise TaskInputError(f"task {self.name!r} decodes {self.train_queries[m]} {m} queries per "
                                         f"training window (options.train_{m}_queries), got a query_index of {got}")

    def make_batch(self, video: Any, audio: Any = None, sample_rate: int | None = None) -> Batch:
        """One window (or a batch of them): video (T, H, W, 3) uint8 and mono audio (S,) in [-1, 1] at the task's
        sample rate."""
        o = self.options
        if audio is None:
            raise TaskInputError(f"task {self.name!r} takes video and audio: predict({self.name!r}, video, audio)")
        if sample_rate is not None and sample_rate != o.sample_rate:
            raise TaskInputError(f"task {self.name!r} takes audio at {o.sample_rate} Hz, got {sample_rate} Hz: "
                                 "resample it first")
        if isinstance(video, (list, tuple)):  # frames one by one
            shapes = list(dict.fromkeys(tuple(np.shape(frame)) for frame in video))  # in order of appearance
            if len(shapes) > 1:
                raise TaskInputError(f"task {self.name!r} takes frames of one size, got "
                                     f"{' and '.join(str(shape) for shape in shapes)}")
            video = np.stack([np.asarray(frame) for frame in video])
        video = torch.as_tensor(np.asarray(video), dtype=torch.uint8)
        audio = torch.as_tensor(np.asarray(audio), dtype=torch.float32)
        return {"inputs": {"image": video[None] if video.dim() == 4 else video,
                           "audio": audio[None] if audio.dim() == 1 else audio}}

    def predict(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"image": (B, T, H, W, 3) uint8, "audio": (B, S) float32[, "label": (B,) int64]}; without the batch
        axis for one window."""
        o = self.options
        B = len(outputs["image"])
        rebuilt = {"image": (outputs["image"] * 255).round().clamp(0, 255).to(torch.uint8).reshape(B, o.frames,
                                                                                                  *o.image_size, 3),
                   "audio": (outputs["audio"] / o.audio_gain).reshape(B, -1)}
        if "label" in outputs:
            rebuilt["label"] = outputs["label"][:, 0].argmax(-1)
        return {k: v[0] for k, v in rebuilt.items()} if B == 1 else rebuilt

    def log_media(self, outputs: dict[str, torch.Tensor], batch: Batch, max_frames: int = 4) -> dict[str, Any]:
        """The first window: some frames beside their reconstructions, and the audio, original and rebuilt."""
        if QUERY_INDEX in batch:
            return {}  # a training batch decodes only some queries
        rebuilt = self.predict({k: v.detach().float().cpu()[:1] for k, v in outputs.items()})
        video = batch["inputs"]["image"][0].cpu().numpy()
        step = max(1, self.options.frames // max_frames)
        pictures = []
        for t in range(0, self.options.frames, step):
            pictures += [Image(video[t], caption=f"frame {t}"),
                         Image(rebuilt["image"][t].numpy(), caption=f"frame {t} rebuilt")]
        audio = batch["inputs"]["audio"][0].cpu().numpy()
        rate = self.options.sample_rate
        return {"frames": Images(pictures),
                "audio": Audio(np.clip(audio, -1, 1), rate, caption="original"),
                "audio_rebuilt": Audio(np.clip(rebuilt["audio"].numpy(), -1, 1), rate, caption="rebuilt")}
