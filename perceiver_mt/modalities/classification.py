"""Classification of any modality: a preprocessor's tokens in, one learned query out, class logits.

A plugin names its classes and its input preprocessor; everything else (query, decoder, head, loss,
accuracy beside the majority-class baseline, a confusion matrix for the dashboard) is here:

    class MyImages(ClassificationTask):
        class_names = [str(d) for d in range(10)]
        default_data = "my_images"

        def build_preprocessor(self):
            return ImagePatches((28, 28), patch_size=4)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from perceiver_mt.metrics import MajorityClassAccuracy
from perceiver_mt.model import DecoderConfig
from perceiver_mt.modalities.projection import TokenAdapter
from perceiver_mt.modalities.queries import LearnedQueries
from perceiver_mt.task import Batch, Task
from perceiver_mt.tracking.media import Heatmap


@dataclass
class ClassificationOptions:
    query_channels: int = 64  # width of the one output query and of the decoder output
    decoder_heads: int = 1
    label_smoothing: float = 0.0


class ClassificationTask(Task):
    """Base of single-label classification tasks built from the modality kit."""

    options_class: ClassVar[type] = ClassificationOptions
    class_names: ClassVar[Sequence[str]] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def build_preprocessor(self) -> nn.Module:
        """The kit preprocessor that turns batch["inputs"] into features (ImagePatches, LogMelPatches, ...).
        Tasks whose inputs need no preprocessor (embedded bytes) override `build_adapter` instead."""
        raise NotImplementedError(f"{type(self).__name__} must define build_preprocessor() or build_adapter()")

    def build_adapter(self) -> nn.Module:
        return TokenAdapter(self.build_preprocessor(), self.encoder.input_channels)

    def build_queries(self) -> nn.Module:
        return LearnedQueries(self.options.query_channels)

    def decoder_config(self) -> DecoderConfig:
        return DecoderConfig(query_channels=self.options.query_channels, num_heads=self.options.decoder_heads)

    def build_head(self) -> nn.Module:
        return nn.Sequential(nn.Flatten(1), nn.Linear(self.options.query_channels, self.num_classes))  # (B, classes)

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(outputs, batch["target"], label_smoothing=self.options.label_smoothing)

    def build_metrics(self) -> MetricCollection:
        return MetricCollection({"acc": MulticlassAccuracy(self.num_classes, average="micro"),
                                 "baseline_acc": MajorityClassAccuracy(self.num_classes)})

    def log_media(self, outputs: torch.Tensor, batch: Batch) -> dict[str, Any]:
        """The batch's confusion matrix; subclasses add pictures or sounds of a few samples."""
        predicted = outputs.argmax(dim=-1).cpu().numpy()
        confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)  # rows: true, columns: predicted
        np.add.at(confusion, (batch["target"].cpu().numpy(), predicted), 1)
        labels = list(self.class_names)
        return {"confusion_matrix": Heatmap(confusion, labels, labels, title="confusion (one validation batch)",
                                            row_axis="true", col_axis="predicted", extra={"cmap": "Blues"})}

    def captions(self, outputs: torch.Tensor, batch: Batch, count: int) -> list[str]:
        """ "pred <class> / true <class>" for the first `count` samples, for media captions."""
        predicted = outputs.argmax(dim=-1).tolist()
        target = batch["target"].tolist()
        return [f"pred {self.class_names[p]} / true {self.class_names[t]}" for p, t in zip(predicted[:count], target)]
