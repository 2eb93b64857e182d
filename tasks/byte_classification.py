"""Text classification from raw UTF-8 bytes: the byte MLM task's adapter (so its trained encoder and byte
embedding load as they are, `init_from`), one learned query out.

    byte_classification   classes named by `options.class_names`
    fortunes_language     language of a fortune-cookie quote: en, de, es, it, pl, ru (datamodules/fortunes.py)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from perceiver_mt.modalities import check_tensor, decode_bytes, encode_texts
from perceiver_mt.modalities.classification import ClassificationOptions, ClassificationTask
from perceiver_mt.modalities.text import ByteAdapter
from perceiver_mt.task import Batch
from perceiver_mt.tracking.media import Table

from datamodules.fortunes import LANGUAGES


@dataclass
class ByteClassificationOptions(ClassificationOptions):
    class_names: list[str] = field(default_factory=list)
    seq_len: int = 128  # bytes per sample; as the byte MLM task's, so its adapter loads unchanged
    position: str = "fourier"  # fourier | learned
    num_bands: int = 32


class ByteClassificationTask(ClassificationTask):
    options_class = ByteClassificationOptions
    shard_fields = {"inputs": "int16", "target": "uint8", "index": "int64"}

    @property
    def class_names(self) -> list[str]:  # type: ignore[override]
        if not self.options.class_names:
            raise ValueError(f"task {self.name!r} needs options.class_names")
        return list(self.options.class_names)

    def build_adapter(self) -> nn.Module:
        o = self.options
        return ByteAdapter(self.encoder.input_channels, o.seq_len, o.position, o.num_bands)

    def datamodule_defaults(self) -> dict[str, Any]:
        return {"seq_len": self.options.seq_len}

    def check_batch(self, batch: Batch) -> None:
        check_tensor(self.name, "byte ids", batch["inputs"], (None, self.options.seq_len), floating=False)

    def make_batch(self, raw: Any) -> Batch:
        """Texts (str or bytes); each keeps its first seq_len bytes."""
        return {"inputs": encode_texts(raw, self.options.seq_len, truncate=True)}

    def log_media(self, outputs: torch.Tensor, batch: Batch, count: int = 8) -> dict[str, Any]:
        captions = self.captions(outputs, batch, count)
        rows = [[decode_bytes(batch["inputs"][i].tolist()), *caption.removeprefix("pred ").split(" / true ")]
                for i, caption in enumerate(captions)]
        return {**super().log_media(outputs, batch), "predictions": Table(["text", "prediction", "truth"], rows)}


class FortunesLanguageTask(ByteClassificationTask):
    default_data = "fortunes"

    @property
    def class_names(self) -> list[str]:  # type: ignore[override]
        return list(LANGUAGES)
