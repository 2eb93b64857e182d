"""Audio as tokens: raw-waveform patches + 1D Fourier features, or log-mel patches + 2D Fourier features.

    patches = WaveformPatches(num_samples=48000, samples_per_patch=96)     # DeepMind's AudioSet raw-audio input
    patches(waveforms)                                   # (B, 48000) -> (B, 500, 96 + P)
    mel = LogMelPatches(num_samples=16000, sample_rate=16000, patch=(4, 8))
    mel(waveforms)                                       # (B, 16000) -> log-mel (B, 100, 64) -> (B, 25*8, 32 + P)
    LogMelPatches(16000, 16000, n_fft=1024, f_min=60, f_max=2000, scale="log", frequency_position=False)
                                                         # log-frequency bands, positions in time only: pitch-invariant

Files are decoded by libsndfile (`soundfile`: WAV, FLAC, OGG/Vorbis, MP3, ...), resampled by libsoxr, and
mel filters come from librosa; the spectrogram itself is `torch.stft`, so it runs batched on the model's device.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from perceiver_mt.modalities.checks import TaskInputError, describe
from perceiver_mt.modalities.grid import FeaturesOfPatches, GridPatches

FREQUENCY_SCALES = ("mel", "log")  # band spacing of LogMelPatches: mel filters, or equal steps in log frequency


def load_audio(path: str | Path, sample_rate: int | None = None, mono: bool = True) -> tuple[np.ndarray, int]:
    """Decode an audio file -> (samples float32 in [-1, 1], sample rate): (T,) if `mono` (channels averaged),
    else (channels, T); resampled to `sample_rate` unless it is None."""
    import soundfile

    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (T, channels)
    samples = data.mean(axis=1) if mono else data.T
    if sample_rate is not None and sample_rate != rate:
        samples, rate = resample(samples, rate, sample_rate), sample_rate
    return np.ascontiguousarray(samples, dtype=np.float32), rate


def resample(samples: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """(T,) or (channels, T) at `rate` -> the same at `new_rate` (libsoxr's high-quality resampler)."""
    import soxr

    if samples.ndim == 1:
        return soxr.resample(samples, rate, new_rate).astype(np.float32)
    return np.ascontiguousarray(soxr.resample(samples.T, rate, new_rate).T, dtype=np.float32)  # soxr: (T, channels)


@functools.lru_cache(maxsize=16)
def mel_filters(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float | None) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular mel filters (librosa: Slaney mel scale, area-normalised)."""
    import librosa

    return torch.from_numpy(librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max))


def log_frequency_filters(sample_rate: int, n_fft: int, n_bins: int, f_min: float, f_max: float) -> torch.Tensor:
    """(n_bins, n_fft // 2 + 1) triangular filters whose centres are equally spaced in log frequency from
    f_min to f_max (each reaches its neighbours' centres; area-normalised).

    On this scale a pitch change is a translation: every harmonic of a voice a factor r higher lies
    log(r) / log(f_max / f_min) * (n_bins - 1) bins further up. Bins narrower than the STFT's own
    (sample_rate / n_fft) interpolate between its bins, so choose n_fft long enough for the lowest pitch.
    """
    if not 0 < f_min < f_max <= sample_rate / 2 or n_bins < 2:
        raise ValueError(f"log-frequency bins need 0 < f_min < f_max <= {sample_rate / 2:g} Hz and at least 2 bins, "
                         f"got f_min={f_min}, f_max={f_max}, n_bins={n_bins}")
    step = np.log(f_max / f_min) / (n_bins - 1)
    centres = f_min * np.exp(step * np.arange(-1, n_bins + 1))  # one more on each side: the outer slopes
    frequencies = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = centres[:-2, None], centres[1:-1, None], centres[2:, None]
    rising = (frequencies - lower) / (centre - lower)
    falling = (upper - frequencies) / (upper - centre)
    weights = np.clip(np.minimum(rising, falling), 0, None)
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
    return torch.from_numpy(weights.astype(np.float32))


@functools.lru_cache(maxsize=16)
def frequency_filters(scale: str, sample_rate: int, n_fft: int, n_bins: int, f_min: float,
                      f_max: float | None) -> torch.Tensor:
    """The filters of `scale`: "mel" (`mel_filters`) or "log" (`log_frequency_filters`, f_min > 0)."""
    if scale == "mel":
        return mel_filters(sample_rate, n_fft, n_bins, f_min, f_max)
    if scale == "log":
        return log_frequency_filters(sample_rate, n_fft, n_bins, f_min, f_max or sample_rate / 2)
    raise ValueError(f"frequency scale {scale!r} is unknown; choose one of {', '.join(FREQUENCY_SCALES)}")


def num_frames(num_samples: int, hop_length: int) -> int:
    """STFT frames of a centred spectrogram of `num_samples` samples."""
    return 1 + num_samples // hop_length


def power_spectrogram(waveform: torch.Tensor, n_fft: int = 400, hop_length: int = 160) -> torch.Tensor:
    """(B, T) -> (B, n_fft // 2 + 1, frames) |STFT|^2: Hann window of n_fft samples, frames centred on
    multiples of hop_length (zero padding at the ends, as librosa's default)."""
    window = torch.hann_window(n_fft, device=waveform.device, dtype=waveform.dtype)
    spectrum = torch.stft(waveform, n_fft, hop_length, window=window, center=True, pad_mode="constant",
                          return_complex=True)
    return spectrum.real.square() + spectrum.imag.square()


def shift_pitch(power: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """(B, F, frames) power spectra with every frequency multiplied by factors[b]: P'(f) = P(f / factor).

    Linear interpolation between frequency bins; what would come from above the highest bin is silence.
    Pitch and formants move together, duration stays: a higher or lower voice saying the same thing.
    """
    B, F, T = power.shape
    source = torch.arange(F, device=power.device, dtype=power.dtype) / factors[:, None].to(power.dtype)  # (B, F)
    low = source.floor().clamp(max=F - 1)
    weight = (source - low)[..., None]  # (B, F, 1)
    low = low.long()
    high = (low + 1).clamp(max=F - 1)
    warped = (torch.gather(power, 1, low[..., None].expand(B, F, T)) * (1 - weight)
              + torch.gather(power, 1, high[..., None].expand(B, F, T)) * weight)
    return warped.masked_fill((source > F - 1)[..., None], 0.0)


def log_mel_spectrogram(waveform: torch.Tensor, sample_rate: int, n_fft: int = 400, hop_length: int = 160,
                        n_mels: int = 64, f_min: float = 0.0, f_max: float | None = None,
                        eps: float = 1e-6, pitch_factors: torch.Tensor | None = None,
                        scale: str = "mel") -> torch.Tensor:
    """(B, T) waveforms -> (B, frames, n_mels) log(mel power + eps), frames = 1 + T // hop_length.

    The power spectrogram (`power_spectrogram`) times the mel filters (or, with scale="log", filters
    equally spaced in log frequency: `log_frequency_filters`); `pitch_factors` (B,) first shifts each
    clip's frequencies (`shift_pitch`).
    """
    power = power_spectrogram(waveform, n_fft, hop_length)  # (B, n_fft // 2 + 1, frames)
    if pitch_factors is not None:
        power = shift_pitch(power, pitch_factors)
    filters = frequency_filters(scale, sample_rate, n_fft, n_mels, f_min, f_max).to(waveform.device, waveform.dtype)
    return torch.log(torch.einsum("mf,bft->btm", filters, power) + eps)  # (B, frames, n_mels)


class WaveformPatches(GridPatches):
    """Mono waveforms (B, T)  ->  features (B, T / s, s + P): s = samples_per_patch consecutive samples per
    token and 1D Fourier features of the patch index (DeepMind's raw-audio preprocessing)."""

    def __init__(self, num_samples: int, samples_per_patch: int = 96, position: str = "fourier",
                 num_bands: int = 64, max_resolution: Sequence[int] | None = None, learned_channels: int = 64):
        super().__init__((num_samples,), (samples_per_patch,), 1, position, num_bands, max_resolution, learned_channels)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return super().forward(waveform.unsqueeze(-1))


class LogMelPatches(FeaturesOfPatches):
    """Mono waveforms (B, T)  ->  log-mel (B, frames, n_mels)  ->  features (B, M, pt * pf + P).

    Tokens are patches of `patch` = (pt frames x pf mel bands), with 2D Fourier features of the patch
    grid. Frames past the last whole patch in time are dropped. `normalize` standardises each clip's
    log-mel to zero mean and unit variance, so loudness (microphone gain, distance) does not shift every
    input; it is per clip, so a batch never mixes its samples.

    `pitch_shift` > 1: in training mode each clip's frequencies are multiplied by a factor drawn
    log-uniformly from [1 / pitch_shift, pitch_shift] (torch's generator), so a model that heard one
    voice also hears it higher and lower at the same tempo. Evaluation is never shifted.

    `scale="log"`: bands equally spaced in log frequency from `f_min` (> 0) to `f_max`, where a higher or
    lower voice is the same picture moved along the band axis; with `frequency_position=False` the tokens
    carry the position code of their time only, so that move changes which token holds a patch, not what
    the encoder sees (register invariance built in, not learned from augmentation).
    """

    def __init__(self, num_samples: int, sample_rate: int, n_fft: int = 400, hop_length: int = 160, n_mels: int = 64,
                 patch: Sequence[int] = (4, 8), position: str = "fourier", num_bands: int = 8,
                 f_min: float = 0.0, f_max: float | None = None, normalize: bool = True, pitch_shift: float = 1.0,
                 scale: str = "mel", frequency_position: bool = True):
        super().__init__()
        if scale not in FREQUENCY_SCALES:
            raise ValueError(f"frequency scale {scale!r} is unknown; choose one of {', '.join(FREQUENCY_SCALES)}")
        self.pitch_shift = pitch_shift
        self.spectrogram_options = dict(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels,
                                        f_min=f_min, f_max=f_max, scale=scale)
        self.num_samples = num_samples
        frames = num_frames(num_samples, hop_length)
        self.frames = frames - frames % patch[0]
        if self.frames == 0:
            raise ValueError(f"{num_samples} samples make {frames} frames, fewer than one patch of {patch[0]}")
        self.normalize = normalize
        self.patches = GridPatches((self.frames, n_mels), tuple(patch), 1, position, num_bands,
                                   position_axes=None if frequency_position else (0,))

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, frames, n_mels), cropped to whole patches (and standardised per clip if `normalize`)."""
        factors = None
        if self.training and self.pitch_shift > 1:
            span = math.log(self.pitch_shift)
            factors = torch.exp(torch.empty(waveform.shape[0], device=waveform.device).uniform_(-span, span))
        mel = log_mel_spectrogram(waveform, **self.spectrogram_options, pitch_factors=factors)[:, :self.frames]
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

