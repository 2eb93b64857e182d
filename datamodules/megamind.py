"""Audio-video windows of OpenCV's `Megamind.avi` (Debian opencv-doc): 270 frames at 23.976 fps with
11.2 s of 48 kHz stereo AC3 audio, decoded by PyAV (FFmpeg).

One clip: a demonstration of multimodal autoencoding, not a benchmark. Training windows start anywhere
in the first 80% of the clip; evaluation windows lie wholly in the last 20% (validation in its first
half, test in its second), so no evaluated frame or sample was ever trained on. With `train_zoom` > 1 each
training window shows a random crop of its frames, between the whole frame and 1/zoom of each side, resized
to the window's size (both frames the same crop): close-ups of the training shots, which the clip's last shot,
a close-up, otherwise has no like in training.

A sample: {"inputs": {"audio": (S,) float32 mono at 48 kHz, "image": (T, H, W, 3) uint8}, "index": int64}
("image" holds the video frames, Hugging Face's name for that modality); the target of autoencoding is the
input itself. S = the window's duration in samples (2002 per frame).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.flow_scenes import OPENCV_SAMPLES, require, resize_frames
from perceiver_mt.data import EpochSeededDataset, InMemoryDataModule
from perceiver_mt.modalities import QUERY_INDEX, draw_query_subset

CLIP = OPENCV_SAMPLES / "Megamind.avi"
SAMPLE_RATE = 48_000
TRAIN_FRACTION = 0.8


@dataclass
class Clip:
    video: np.ndarray  # (frames, H, W, 3) uint8
    audio: np.ndarray  # (samples,) float32, mono, at SAMPLE_RATE, sample 0 at the first frame's time
    fps: float

    def samples_at(self, frame: int) -> int:
        """Index of the audio sample at the start of video frame `frame`."""
        return round(frame * SAMPLE_RATE / self.fps)


@lru_cache(maxsize=4)
def load_clip(path: str | Path = CLIP, image_size: tuple[int, int] = (48, 64)) -> Clip:
    """Every frame resized to `image_size` (H, W) by area averaging, and the audio downmixed to mono.

    Audio frames are placed by their timestamps, so a packet the decoder rejects (the file has one) leaves
    a short silence instead of shifting everything after it.
    """
    av = require("av", "av")
    cv2 = require("cv2", "opencv-python-headless")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: install Debian's opencv-doc (apt-get install opencv-doc)")
    H, W = image_size
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        frames = [cv2.resize(f.to_ndarray(format="rgb24"), (W, H), interpolation=cv2.INTER_AREA)
                  for f in container.decode(stream)]
    video = np.stack(frames)
    audio = np.zeros(round(len(frames) * SAMPLE_RATE / fps), np.float32)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        if stream.rate != SAMPLE_RATE:
            raise ValueError(f"{path}: audio at {stream.rate} Hz, expected {SAMPLE_RATE}")
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except av.error.InvalidDataError:  # one corrupt AC3 packet: keep the timeline, skip its samples
                continue
            for frame in decoded:
                samples = frame.to_ndarray().reshape(len(frame.layout.channels), -1).mean(axis=0)
                begin = round((float(frame.time) - start) * SAMPLE_RATE)
                piece = samples[max(0, -begin):max(0, len(audio) - begin)]
                audio[max(begin, 0):max(begin, 0) + len(piece)] = piece
    return Clip(video, audio, fps)


def window_starts(clip: Clip, split: str, frames: int, eval_stride: int) -> list[int]:
    """First frames of the windows of `split`: training anywhere in the first 80%, evaluation in the last 20%."""
    total = len(clip.video)
    boundary = round(total * TRAIN_FRACTION)
    middle = (boundary + total) // 2
    first, end, stride = {"train": (0, boundary, 1), "val": (boundary, middle, eval_stride),
                          "test": (middle, total, eval_stride)}[split]
    return list(range(first, end - frames + 1, stride))


def random_zoom(frames: np.ndarray, size: tuple[int, int], zoom: float, rng: np.random.Generator) -> np.ndarray:
    """One crop of all `frames` (T, H', W', 3), its sides 1/s of theirs with s drawn log-uniformly from
    [1, zoom], at a uniformly drawn place, each frame resized to `size` (H, W) by area averaging."""
    height, width = frames.shape[1:3]
    scale = float(np.exp(rng.uniform(0.0, np.log(zoom))))
    h, w = max(1, round(height / scale)), max(1, round(width / scale))
    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    return resize_frames(frames[:, top:top + h, left:left + w], size)


class ClipWindows(EpochSeededDataset):
    """Windows of `frames` frames from `starts`. With `query_counts` ({"image": n, "audio": m}, training) each
    also carries `query_index`: n pixels and m audio patches drawn from rng (seed, epoch, start), which the
    task decodes instead of all of them (subsampled decoding). With `zoom_source` (the clip at `zoom` times the
    windows' size) the frames are a random crop of it (`random_zoom`)."""

    def __init__(self, clip: Clip, starts: list[int], frames: int, audio_samples: int,
                 query_counts: dict[str, int] | None = None, samples_per_patch: int = 16, seed: int = 0,
                 zoom: float = 1.0, zoom_source: Clip | None = None):
        self.clip = clip
        self.zoom = zoom
        self.zoom_source = zoom_source
        self.starts = starts
        self.frames = frames
        self.audio_samples = audio_samples
        self.query_counts = query_counts or {}
        self.samples_per_patch = samples_per_patch
        self.seed = seed

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, object]:
        start = self.starts[i]
        first_sample = self.clip.samples_at(start)
        audio = self.clip.audio[first_sample:first_sample + self.audio_samples]
        audio = np.pad(audio, (0, self.audio_samples - len(audio)))  # the audio ends 1/30 s before the video
        video = self.clip.video[start:start + self.frames]
        if self.zoom_source is not None:
            rng = np.random.default_rng((self.seed, self.epoch, start, 1))  # apart from the queries' stream
            video = random_zoom(self.zoom_source.video[start:start + self.frames], video.shape[1:3], self.zoom, rng)
        sample = {"inputs": {"audio": torch.from_numpy(audio), "image": torch.from_numpy(video)},
                  "index": torch.tensor(start, dtype=torch.long)}
        totals = {"audio": self.audio_samples // self.samples_per_patch,
                  "image": video.shape[0] * video.shape[1] * video.shape[2]}
        if any(0 < self.query_counts.get(m, 0) < n for m, n in totals.items()):
            rng = np.random.default_rng((self.seed, self.epoch, start))
            sample[QUERY_INDEX] = {m: draw_query_subset(n, min(self.query_counts.get(m) or n, n), rng)
                                   for m, n in totals.items()}
        return sample


class MegamindDataModule(InMemoryDataModule):
    def __init__(self, batch_size: int = 8, frames: int = 8, image_size: tuple[int, int] = (48, 64),
                 eval_stride: int = 2, samples_per_frame: int = 2002, train_image_queries: int = 0,
                 train_audio_queries: int = 0, samples_per_patch: int = 16, train_zoom: float = 1.0,
                 path: str = str(CLIP), seed: int = 0, num_workers: int = 0):
        super().__init__(batch_size, seed, num_workers)
        self.frames = frames  # video frames per window (audio: the same span, 2002 samples per frame)
        self.image_size = tuple(image_size)  # (H, W) the frames are resized to
        self.eval_stride = eval_stride  # frames between evaluation windows
        self.path = path
        self.audio_samples = frames * samples_per_frame  # per window
        # Outputs decoded per training window (0 = all); set from the task's options.
        self.query_counts = {"image": train_image_queries, "audio": train_audio_queries}
        self.samples_per_patch = samples_per_patch
        if not train_zoom >= 1.0:
            raise ValueError(f"megamind: train_zoom={train_zoom} must be at least 1 (1 = whole frames, 2 = crops "
                             "down to half of each side)")
        self.train_zoom = train_zoom  # training crops down to 1/train_zoom of each side (1: whole frames)

    def build_splits(self) -> dict[str, Dataset]:
        clip = load_clip(self.path, self.image_size)
        source = None
        if self.train_zoom > 1:  # frames decoded larger, so that a crop is resized down, not up
            source = load_clip(self.path, tuple(round(n * self.train_zoom) for n in self.image_size))
        return {split: ClipWindows(clip, window_starts(clip, split, self.frames, self.eval_stride), self.frames,
                                   self.audio_samples, self.query_counts if split == "train" else None,
                                   self.samples_per_patch, self.seed, self.train_zoom,
                                   source if split == "train" else None)
                for split in ("train", "val", "test")}
