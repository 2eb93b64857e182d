"""Text as UTF-8 bytes: 256 byte values plus MASK and PAD, embedded and given a position code.

    ids = encode_texts(["hello", "grüße"], seq_len=16)   # (2, 16) int64, PAD after each text
    adapter = ByteAdapter(encoder.input_channels, seq_len=16)
    tokens, pad_mask = adapter({"inputs": ids})          # (2, 16, C), (2, 16) True at PAD

Shared by every byte task (masked language modelling, classification), so an encoder trained on one
reads the same token codes in another.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from perceiver_mt.model import FourierPositionEncoding, LearnedPositionEncoding

NUM_BYTES = 256
MASK_ID, PAD_ID = 256, 257
VOCAB = 258  # 256 byte values, MASK, PAD
POSITIONS = ("fourier", "learned")


class ProjectedFourierPosition(nn.Module):
    """Fixed 1D Fourier features of positions 0..L-1, linearly projected: (B, L, channels)."""

    def __init__(self, seq_len: int, channels: int, num_bands: int):
        super().__init__()
        self.features = FourierPositionEncoding((seq_len,), num_bands)
        self.project = nn.Linear(self.features.num_channels, channels)
        # Unit variance out (features have mean square ~1/2), as strong as an nn.Embedding byte code.
        nn.init.normal_(self.project.weight, std=(2.0 / self.features.num_channels) ** 0.5)

    def forward(self, batch_size: int) -> torch.Tensor:
        return self.project(self.features(batch_size))  # (B, L, channels)


def build_position(kind: str, seq_len: int, channels: int, num_bands: int) -> nn.Module:
    """A module batch_size -> (B, seq_len, channels) position codes: "fourier" (projected) or "learned"."""
    if kind == "fourier":
        return ProjectedFourierPosition(seq_len, channels, num_bands)
    if kind == "learned":
        return LearnedPositionEncoding(seq_len, channels)
    raise ValueError(f"position={kind!r} is unknown; choose one of {', '.join(POSITIONS)}")


class ByteAdapter(nn.Module):
    """(B, L) byte ids  ->  (B, L, C) tokens (byte embedding + position code), (B, L) pad mask (True at PAD)."""

    def __init__(self, channels: int, seq_len: int, position: str = "fourier", num_bands: int = 32,
                 key: str = "inputs"):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, channels)
        self.position = build_position(position, seq_len, channels, num_bands)
        self.key = key

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = batch[self.key]
        tokens = self.embed(ids) + self.position(ids.shape[0])  # (B, L, C)
        return tokens, ids == PAD_ID


def encode_text(text: str | bytes, seq_len: int, mask_char: str | None = None) -> list[int]:
    """One text -> its UTF-8 byte ids, PAD-filled to `seq_len` (ValueError if longer); each `mask_char` -> MASK."""
    if isinstance(text, bytes):
        ids = list(text)
    else:
        ids = []
        for i, piece in enumerate(text.split(mask_char) if mask_char else [text]):
            if i:
                ids.append(MASK_ID)
            ids.extend(piece.encode("utf-8"))
    if len(ids) > seq_len:
        raise ValueError(f"{len(ids)} bytes do not fit {seq_len}")
    return ids + [PAD_ID] * (seq_len - len(ids))


def encode_texts(texts: Sequence[str | bytes] | str, seq_len: int, mask_char: str | None = None,
                 truncate: bool = False) -> torch.Tensor:
    """Texts -> (B, seq_len) int64 byte ids (see `encode_text`); `truncate` keeps the first seq_len bytes."""
    texts = [texts] if isinstance(texts, (str, bytes)) else list(texts)
    if truncate:
        texts = [(t if isinstance(t, bytes) else t.encode("utf-8"))[:seq_len] for t in texts]
    return torch.tensor([encode_text(t, seq_len, mask_char) for t in texts], dtype=torch.long)


def decode_bytes(ids: Sequence[int]) -> str:
    """Byte ids -> text (PAD dropped, MASK shown as U+2588, invalid UTF-8 replaced)."""
    out = bytearray()
    for i in ids:
        if i == MASK_ID:
            out += "\u2588".encode()
        elif i < NUM_BYTES:
            out.append(i)
    return out.decode("utf-8", errors="replace")
