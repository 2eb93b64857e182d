"""Byte-level masked language modelling: raw UTF-8 bytes in, one output query per byte position.

The adapter (the modality kit's `ByteAdapter`, shared with every byte task) embeds bytes (plus MASK and
PAD) and adds a position code. Each output query is a
position code; with `query_context > 0` it also carries the (masked) input bytes of a small window
around it, the way Perceiver IO's flow decoder builds queries from input features: the latents then
only have to supply what the neighbourhood cannot. Loss and accuracy count masked positions only.

Positions are Fourier features by default: they are distinct and smooth from the first step, so the
encoder's cross-attention can tell bytes apart and find neighbours at once. Learned positions start
as near-identical small random vectors and need thousands of steps to become useful, which a short
CPU run does not have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from perceiver_mt.model import DecoderConfig
from perceiver_mt.modalities.text import (
    MASK_ID, NUM_BYTES, PAD_ID, POSITIONS, VOCAB, ByteAdapter, build_position, encode_text,
)
from perceiver_mt.task import Batch, Task
from perceiver_mt.tracking.media import Table

@dataclass
class ByteMLMOptions:
    seq_len: int = 128  # bytes per sample; must match the DataModule's
    mask_prob: float = 0.15  # passed to the DataModule unless its config says otherwise
    query_channels: int = 64
    query_context: int = 0  # bytes each side of a position mixed into its output query (0 = position only)
    decoder_heads: int = 1
    decoder_qk_channels: int | None = None  # query/key width of the decoder's attention; None = query_channels
    decoder_v_channels: int | None = None  # value width; None = the query/key width
    decoder_query_residual: bool = True  # add each query back after attention (off: queries are positions only)
    position: str = "fourier"  # fourier | learned: position code of input tokens and output queries
    num_bands: int = 32  # Fourier bands (frequencies 1..seq_len/2) when position="fourier"
    mask_char: str = "\u2588"  # marks masked characters in text given to `make_batch`

    def __post_init__(self) -> None:
        for name in ("seq_len", "query_channels", "decoder_heads", "num_bands"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0.0 < self.mask_prob <= 1.0:
            raise ValueError(f"mask_prob={self.mask_prob} must be in (0, 1]")
        if self.query_context < 0:
            raise ValueError(f"query_context={self.query_context} must be >= 0")
        if self.position not in POSITIONS:
            raise ValueError(f"position={self.position!r} is unknown; choose one of {', '.join(POSITIONS)}")
        if len(self.mask_char) != 1:
            raise ValueError(f"mask_char={self.mask_char!r} must be one character")


class PositionQueries(nn.Module):
    """One query per byte: position code (+ embedded bytes of a window around it)."""

    def __init__(self, channels: int, seq_len: int, context: int, position: str = "fourier", num_bands: int = 32):
        super().__init__()
        self.position = build_position(position, seq_len, channels, num_bands)
        self.context = context
        if context:
            self.embed = nn.Embedding(VOCAB, channels)
            self.mix = nn.Conv1d(channels, channels, kernel_size=2 * context + 1, padding=context)

    def forward(self, batch: Batch) -> torch.Tensor:
        ids = batch["inputs"]
        queries = self.position(ids.shape[0])  # (B, L, Cq)
        if self.context:
            queries = queries + self.mix(self.embed(ids).transpose(1, 2)).transpose(1, 2)
        return queries


class MostFrequentByteAccuracy(Metric):
    """Accuracy of always guessing the single most frequent masked byte: the baseline to beat.

    It uses the evaluated text's own counts, so it is an upper bound on any fixed-guess baseline.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("counts", torch.zeros(NUM_BYTES, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.counts += torch.bincount(target, minlength=NUM_BYTES)

    def compute(self) -> torch.Tensor:
        return self.counts.max().float() / self.counts.sum().clamp(min=1)


class ByteMLMTask(Task):
    options_class = ByteMLMOptions
    default_data = "pydoc_text"
    # Ids go up to PAD_ID (257), targets are bytes. Masks are stored as drawn at write time.
    shard_fields = {"inputs": "int16", "target": "uint8", "loss_mask": "bool", "index": "int64"}

    def build_adapter(self) -> nn.Module:
        o = self.options
        return ByteAdapter(self.encoder.input_channels, o.seq_len, o.position, o.num_bands)

    def build_queries(self) -> nn.Module:
        o = self.options
        return PositionQueries(o.query_channels, o.seq_len, o.query_context, o.position, o.num_bands)

    def decoder_config(self) -> DecoderConfig:
        o = self.options
        return DecoderConfig(query_channels=o.query_channels, num_heads=o.decoder_heads,
                             qk_channels=o.decoder_qk_channels, v_channels=o.decoder_v_channels,
                             query_residual=o.decoder_query_residual)

    def build_head(self) -> nn.Module:
        # (B, L, 256) logits, each position on its own: `speed.query_chunk_size` may decode long texts in chunks
        return nn.Linear(self.options.query_channels, NUM_BYTES)

    def datamodule_defaults(self) -> dict:
        return {"seq_len": self.options.seq_len, "mask_prob": self.options.mask_prob}

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        masked = batch["loss_mask"]
        return F.cross_entropy(outputs[masked], batch["target"][masked])

    def loss_count(self, batch: Batch) -> torch.Tensor:
        return batch["loss_mask"].sum()  # the loss is a mean over masked bytes, not over samples

    def build_metrics(self) -> MetricCollection:
        return MetricCollection({
            "masked_acc": MulticlassAccuracy(NUM_BYTES, average="micro"),
            "baseline_acc": MostFrequentByteAccuracy(),
        })

    def update_metrics(self, metrics: MetricCollection, outputs: torch.Tensor, batch: Batch) -> None:
        masked = batch["loss_mask"]
        metrics.update(outputs.detach()[masked], batch["target"][masked])

    def check_batch(self, batch: Batch) -> None:
        ids = batch["inputs"]
        if ids.dim() != 2 or ids.shape[1] != self.options.seq_len or ids.is_floating_point():
            raise ValueError(
                f"task {self.name!r} takes integer byte ids of shape (B, {self.options.seq_len}), "
                f"got {tuple(ids.shape)} {ids.dtype}"
            )

    def make_batch(self, raw: list[str] | str) -> Batch:
        """Texts with `mask_char` where a byte is hidden  ->  a batch (padded to seq_len)."""
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, (list, tuple)) or not all(isinstance(text, str) for text in texts):
            raise ValueError(f"task {self.name!r} takes a text or a list of texts (str, {self.options.mask_char!r} "
                             f"marking a masked character), got {type(raw).__name__}")
        rows = []
        for text in texts:
            try:
                rows.append(encode_text(text, self.options.seq_len, self.options.mask_char))
            except ValueError:
                raise ValueError(f"task {self.name!r} takes at most {self.options.seq_len} bytes per text, "
                                 f"got {len(text.encode('utf-8'))}") from None
        return {"inputs": torch.tensor(rows, dtype=torch.long).reshape(len(rows), self.options.seq_len)}

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.argmax(dim=-1)  # (B, L) predicted bytes at every position

    def log_media(self, outputs: torch.Tensor, batch: Batch, max_rows: int = 8) -> dict[str, Any]:
        """A table: the input as the model saw it, the scored positions filled with its guesses, and the truth."""
        ids = batch["inputs"].cpu()
        masked = batch["loss_mask"].cpu()
        truth = batch["target"].cpu()
        filled = torch.where(masked, outputs.argmax(dim=-1).cpu(), truth)
        rows = []
        for i in range(min(max_rows, len(ids))):
            shown = "".join(self.options.mask_char if b == MASK_ID else _char(b) for b in ids[i].tolist())
            rows.append([shown, _text(filled[i]), _text(truth[i]), int(masked[i].sum())])
        return {"predictions": Table(["masked input", "prediction", "truth", "masked bytes"], rows)}


def _char(byte: int) -> str:
    """One byte as a printable character (bytes are shown one by one, so multi-byte UTF-8 becomes '?')."""
    if byte == PAD_ID:
        return ""
    return chr(byte) if 32 <= byte < 127 else ("\n" if byte == 10 else "?")


def _text(row: torch.Tensor) -> str:
    return "".join(_char(int(b)) for b in row.tolist())
