"""Audio classification: mono clips -> log-mel patches + 2D Fourier (or raw-waveform patches + 1D Fourier)
in, one learned query out.

    audio_classification   classes named by `options.class_names` (e.g. folders of `data.name: audio_folder`)
    mandarin_tones         the four Mandarin tones of Debian's gcin-voice (datamodules/gcin_tones.py)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from perceiver_mt.modalities import LogMelPatches, WaveformPatches, check_audio
from perceiver_mt.modalities.classification import ClassificationOptions, ClassificationTask
from perceiver_mt.task import Batch
from perceiver_mt.tracking.media import Audio

FEATURES = ("mel", "waveform")


@dataclass
class AudioOptions(ClassificationOptions):
    class_names: list[str] = field(default_factory=list)  # class order (audio_folder: its folder names)
    sample_rate: int = 16000
    num_samples: int = 8000  # every clip is cut or zero-padded to this many samples (0.5 s at 16 kHz)
    features: str = "mel"  # mel: log-mel patches + 2D Fourier | waveform: raw sample patches + 1D Fourier
    n_fft: int = 512
    hop_length: int = 160
    n_mels: int = 64  # frequency bands (mel, or log-spaced with frequency_scale: log)
    frequency_scale: str = "mel"  # mel | log: bands equally spaced in log frequency (a pitch change = a shift)
    f_min: float = 0.0  # lowest band (log scale: > 0, e.g. below the lowest voice)
    f_max: float = 4000.0  # bands up to here: pitch and its first harmonics
    frequency_position: bool = True  # False: tokens carry their time only (with the log scale: register-invariant)
    patch_frames: int = 4  # log-mel patch: frames x mel bands
    patch_mels: int = 8
    samples_per_patch: int = 128  # waveform patches
    num_bands: int = 8
    pitch_shift: float = 1.0  # > 1: training clips' frequencies scaled by up to this factor either way (mel only)


@dataclass
class MandarinTonesOptions(AudioOptions):
    # The two speakers' voices lie 2.7x apart (median F0 350 and 130 Hz): training hears every clip up to 3x
    # higher or lower at its own tempo, so tones are told by their contour, not by the voice's range.
    pitch_shift: float = 3.0
    # Bands equally spaced in log frequency over the voices' pitch and first harmonics, and tokens coded by
    # their time only: a higher voice is the same picture moved along the bands, which no token's code tells
    # apart (held-out speaker 0.56 after 900 steps, against 0.50 with mel bands up to 1.5 kHz).
    frequency_scale: str = "log"
    f_min: float = 60.0
    f_max: float = 2000.0
    n_fft: int = 1024  # 15.6 Hz bins: the lowest log bands still hold a bin
    frequency_position: bool = False


class AudioClassificationTask(ClassificationTask):
    options_class = AudioOptions
    default_data = "audio_folder"
    shard_fields = {"inputs": "float32", "target": "int64", "index": "int64"}

    @property
    def class_names(self) -> list[str]:  # type: ignore[override]
        if not self.options.class_names:
            raise ValueError(f"task {self.name!r} needs options.class_names (e.g. the audio folder's class folders)")
        return list(self.options.class_names)

    def build_preprocessor(self) -> nn.Module:
        o = self.options
        if o.features == "mel":
            return LogMelPatches(o.num_samples, o.sample_rate, o.n_fft, o.hop_length, o.n_mels,
                                 (o.patch_frames, o.patch_mels), num_bands=o.num_bands, f_min=o.f_min, f_max=o.f_max,
                                 pitch_shift=o.pitch_shift, scale=o.frequency_scale,
                                 frequency_position=o.frequency_position)
        if o.features == "waveform":
            return WaveformPatches(o.num_samples, o.samples_per_patch, num_bands=o.num_bands)
        raise ValueError(f"task {self.name!r} option features={o.features!r} is unknown; choose one of "
                         f"{', '.join(FEATURES)}")

    def datamodule_defaults(self) -> dict[str, Any]:
        o = self.options
        return {"sample_rate": o.sample_rate, "num_samples": o.num_samples, "classes": list(o.class_names)}

    def check_batch(self, batch: Batch) -> None:
        check_audio(self.name, batch["inputs"], self.options.num_samples, self.options.sample_rate)

    def make_batch(self, raw: Any) -> Batch:
        """(B, num_samples) or (num_samples,) mono samples in [-1, 1] at `sample_rate`."""
        waveforms = torch.as_tensor(np.asarray(raw), dtype=torch.float32)
        return {"inputs": waveforms[None] if waveforms.dim() == 1 else waveforms}

    def log_media(self, outputs: torch.Tensor, batch: Batch, count: int = 4) -> dict[str, Any]:
        clips = batch["inputs"].float().cpu().numpy()
        captions = self.captions(outputs, batch, count)
        sounds = {f"clip_{i}": Audio(clips[i], self.options.sample_rate, caption) for i, caption in enumerate(captions)}
        return {**super().log_media(outputs, batch), **sounds}


class MandarinTonesTask(AudioClassificationTask):
    options_class = MandarinTonesOptions
    default_data = "gcin_tones"

    @property
    def class_names(self) -> list[str]:  # type: ignore[override]
        return ["tone 1", "tone 2", "tone 3", "tone 4"]

    def datamodule_defaults(self) -> dict[str, Any]:
        return {"sample_rate": self.options.sample_rate, "num_samples": self.options.num_samples}
