"""Audio as tokens: raw-waveform patches + 1D Fourier features, or log-mel patches + 2D Fourier features.

    patches = WaveformPatches(num_samples=48000, samples_per_patch=96)     # DeepMind's AudioSet raw-audio input
    patches(waveforms)                                   # (B, 48000) -> (B, 500, 96 + P)
    mel = LogMelPatches(num_samples=16000, sample_rate=16000, patch=(4, 8))
    mel(waveforms)                                       # (B, 16000) -> log-mel (B, 100, 64) -> (B, 25*8, 32 + P)

Files are decoded by libsndfile (`soundfile`: WAV, FLAC, OGG/Vorbis, MP3, ...) and mel filters come from
librosa; the spectrogram itself is `torch.stft`, so it runs batched on the model's device.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from perceiver_mt.modalities.checks import TaskInputError, describe
from perceiver_mt.modalities.grid import GridPatches


def load_audio(path: str | Path, sample_rate: int | None = None, mono: bool = True) -> tuple[np.ndarray, int]:
    """Decode an audio file -> (samples float32 in [-1, 1], sample rate): (T,) if `mono` (channels averaged),
    else (channels, T); resampled to `sample_rate` (polyphase filter) unless it is None."""
    import soundfile

    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (T, channels)
    samples = data.mean(axis=1) if mono else data.T
    if sample_rate is not None and sample_rate != rate:
        samples, rate = resample(samples, rate, sample_rate), sample_rate
    return np.ascontiguousarray(samples, dtype=np.float32), rate


def resample(samples: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """(..., T) at `rate` -> (..., T * new_rate / rate) at `new_rate` (scipy's polyphase resampler)."""
    from scipy.signal import resample_poly

    ratio = Fraction(new_rate, rate)
    return resample_poly(samples, ratio.numerator, ratio.denominator, axis=-1).astype(np.float32)


@functools.lru_cache(maxsize=16)
def mel_filters(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float | None) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular mel filters (librosa: Slaney mel scale, area-normalised)."""
    import librosa

    return torch.from_numpy(librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max))


def num_frames(num_samples: int, hop_length: int) -> int:
    """STFT frames of a centred spectrogram of `num_samples` samples."""
    return 1 + num_samples // hop_length


def log_mel_spectrogram(waveform: torch.Tensor, sample_rate: int, n_fft: int = 400, hop_length: int = 160,
                        n_mels: int = 64, f_min: float = 0.0, f_max: float | None = None,
                        eps: float = 1e-6) -> torch.Tensor:
    """(B, T) waveforms -> (B, frames, n_mels) log(mel power + eps), frames = 1 + T // hop_length.

    Hann window of n_fft samples, frames centred on multiples of hop_length (zero padding at the ends,
    as librosa's default), power spectrum |STFT|^2 times the mel filters.
    """
    window = torch.hann_window(n_fft, device=waveform.device, dtype=waveform.dtype)
    spectrum = torch.stft(waveform, n_fft, hop_length, window=window, center=True, pad_mode="constant",
                          return_complex=True)  # (B, n_fft // 2 + 1, frames)
    power = spectrum.real.square() + spectrum.imag.square()
    filters = mel_filters(sample_rate, n_fft, n_mels, f_min, f_max).to(waveform.device, waveform.dtype)
    return torch.log(torch.einsum("mf,bft->btm", filters, power) + eps)  # (B, frames, n_mels)


class WaveformPatches(GridPatches):
    """Mono waveforms (B, T)  ->  features (B, T / s, s + P): s = samples_per_patch consecutive samples per
    token and 1D Fourier features of the patch index (DeepMind's raw-audio preprocessing)."""

    def __init__(self, num_samples: int, samples_per_patch: int = 96, position: str = "fourier",
                 num_bands: int = 64, max_resolution: Sequence[int] | None = None, learned_channels: int = 64):
        super().__init__((num_samples,), (samples_per_patch,), 1, position, num_bands, max_resolution, learned_channels)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return super().forward(waveform.unsqueeze(-1))


class LogMelPatches(nn.Module):
    """Mono waveforms (B, T)  ->  log-mel (B, frames, n_mels)  ->  features (B, M, pt * pf + P).

    Tokens are patches of `patch` = (pt frames x pf mel bands), with 2D Fourier features of the patch
    grid. Frames past the last whole patch in time are dropped. `normalize` standardises each clip's
    log-mel to zero mean and unit variance, so loudness (microphone gain, distance) does not shift every
    input; it is per clip, so a batch never mixes its samples.
    """

    def __init__(self, num_samples: int, sample_rate: int, n_fft: int = 400, hop_length: int = 160, n_mels: int = 64,
                 patch: Sequence[int] = (4, 8), position: str = "fourier", num_bands: int = 8,
                 f_min: float = 0.0, f_max: float | None = None, normalize: bool = True):
        super().__init__()
        self.spectrogram_options = dict(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels,
                                        f_min=f_min, f_max=f_max)
        self.num_samples = num_samples
        frames = num_frames(num_samples, hop_length)
        self.frames = frames - frames % patch[0]
        if self.frames == 0:
            raise ValueError(f"{num_samples} samples make {frames} frames, fewer than one patch of {patch[0]}")
        self.normalize = normalize
        self.patches = GridPatches((self.frames, n_mels), tuple(patch), 1, position, num_bands)

    @property
    def channel_groups(self) -> tuple[int, int]:
        return self.patches.channel_groups

    @property
    def num_channels(self) -> int:
        return self.patches.num_channels

    @property
    def num_tokens(self) -> int:
        return self.patches.num_tokens

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, frames, n_mels), cropped to whole patches (and standardised per clip if `normalize`)."""
        mel = log_mel_spectrogram(waveform, **self.spectrogram_options)[:, :self.frames]
        if self.normalize:
            mean = mel.mean(dim=(1, 2), keepdim=True)
            mel = (mel - mean) / mel.std(dim=(1, 2), keepdim=True).clamp(min=1e-5)
        return mel

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.patches(self.log_mel(waveform).unsqueeze(-1))


def fit_length(samples: np.ndarray, num_samples: int, offset: int | None = None) -> np.ndarray:
    """(..., T) cut or zero-padded to (..., num_samples): centred, or from `offset` (a longer clip's start,
    a shorter clip's leading zeros)."""
    length = samples.shape[-1]
    if length >= num_samples:
        start = (length - num_samples) // 2 if offset is None else min(offset, length - num_samples)
        return samples[..., start:start + num_samples]
    left = (num_samples - length) // 2 if offset is None else min(offset, num_samples - length)
    return np.pad(samples, [(0, 0)] * (samples.ndim - 1) + [(left, num_samples - length - left)])


def check_audio(task: str, waveform: object, num_samples: int, sample_rate: int) -> None:
    """One-line TaskInputError unless `waveform` is mono (B, num_samples) floats."""
    expected = f"mono audio of shape (B, {num_samples}) ({num_samples / sample_rate:g} s at {sample_rate} Hz)"
    if isinstance(waveform, torch.Tensor) and waveform.dim() == 3:  # (B, channels, T) or (B, T, channels)
        channels = min(waveform.shape[1:])
        raise TaskInputError(f"task {task!r} takes {expected}, got {channels}-channel audio "
                             f"{describe(waveform)}: mix it down to one channel")
    if not (isinstance(waveform, torch.Tensor) and waveform.dim() == 2 and waveform.shape[1] == num_samples
            and waveform.is_floating_point()):
        raise TaskInputError(f"task {task!r} takes {expected}, got {describe(waveform)}")

