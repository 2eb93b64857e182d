"""Several modalities as one token sequence, DeepMind's multimodal scheme.

Each modality's features (B, M_m, C_m) are padded to a common width C = max_m C_m + min_padding_size with
a trainable vector of that modality's own (so every token says which modality it came from), then the
modalities are concatenated along the tokens in sorted name order:

    inputs = MultimodalInputs({"video": VideoPatches(...), "audio": WaveformPatches(...)})
    features = inputs({"audio": waveforms, "video": frames})   # (B, M_audio + M_video, C)
    adapter = TokenAdapter(inputs, encoder.input_channels)     # batch["inputs"] is that dict

`MultimodalQueries` does the same for output queries, and `split_modalities` cuts decoder outputs back
into one tensor per modality.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn


class ModalityPadding(nn.Module):
    """(B, M, C_m) -> (B, M, width): the features, then this modality's trainable padding vector."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.padding = nn.Parameter(torch.empty(width - channels))
        nn.init.trunc_normal_(self.padding, std=0.02, a=-0.04, b=0.04)  # DeepMind's init scale 0.02

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        B, M, _ = features.shape
        return torch.cat([features, self.padding.to(features.dtype).expand(B, M, -1)], dim=-1)


class MultimodalInputs(nn.Module):
    """{modality: input}  ->  features (B, sum_m M_m, C), modalities in sorted name order.

    `preprocessors` maps each modality to a module with `num_channels` that turns its input into
    (B, M_m, C_m) features (ImagePatches, VideoPatches, WaveformPatches, PointFeatures, ...); those with
    a `pad_mask` method contribute their padding, the others none.
    """

    def __init__(self, preprocessors: Mapping[str, nn.Module], min_padding_size: int = 2):
        super().__init__()
        self.modalities = sorted(preprocessors)
        self.preprocessors = nn.ModuleDict({m: preprocessors[m] for m in self.modalities})
        self.width = max(p.num_channels for p in self.preprocessors.values()) + min_padding_size
        self.padding = nn.ModuleDict({m: ModalityPadding(p.num_channels, self.width)
                                      for m, p in self.preprocessors.items()})

    @property
    def num_channels(self) -> int:
        return self.width

    @property
    def channel_groups(self) -> tuple[int]:
        return (self.width,)

    def forward(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        return torch.cat([self.padding[m](self.preprocessors[m](inputs[m])) for m in self.modalities], dim=1)

    def pad_mask(self, inputs: Mapping[str, Any]) -> torch.Tensor | None:
        masks = []
        for m in self.modalities:
            mask = self.preprocessors[m].pad_mask(inputs[m]) if hasattr(self.preprocessors[m], "pad_mask") else None
            masks.append(mask)
        if all(mask is None for mask in masks):
            return None
        sizes = self.sizes(inputs)
        B = next(mask for mask in masks if mask is not None).shape[0]
        return torch.cat([mask if mask is not None else torch.zeros(B, sizes[m], dtype=torch.bool,
                                                                    device=self._device())
                          for m, mask in zip(self.modalities, masks)], dim=1)

    def sizes(self, inputs: Mapping[str, Any]) -> dict[str, int]:
        """Tokens per modality, in concatenation order (for `split_modalities`)."""
        return {m: self._num_tokens(m, inputs[m]) for m in self.modalities}

    def _num_tokens(self, modality: str, value: Any) -> int:
        preprocessor = self.preprocessors[modality]
        if hasattr(preprocessor, "num_tokens"):
            return preprocessor.num_tokens
        return value["coords"].shape[1] if isinstance(value, dict) else value.shape[1]

    def _device(self) -> torch.device:
        return next(self.padding.parameters()).device


class MultimodalQueries(nn.Module):
    """Output queries of several modalities, padded to one width and concatenated (sorted name order).

    `queries` maps each modality to a query module (LearnedQueries, GridQueries, InputQueries, ...). Each
    is called on that modality's view of the batch: `inputs` = batch["inputs"][modality] when the inputs
    are a dict holding it, and `query_index` = batch["query_index"][modality] when a subset is drawn.
    The decoder's query width (`DecoderConfig.query_channels`) must be `num_channels`.
    """

    def __init__(self, queries: Mapping[str, nn.Module], min_padding_size: int = 2):
        super().__init__()
        self.modalities = sorted(queries)
        self.queries = nn.ModuleDict({m: queries[m] for m in self.modalities})
        self.width = max(q.num_channels for q in self.queries.values()) + min_padding_size
        self.padding = nn.ModuleDict({m: ModalityPadding(q.num_channels, self.width)
                                      for m, q in self.queries.items()})

    @property
    def num_channels(self) -> int:
        return self.width

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return torch.cat([self.padding[m](self.queries[m](modality_view(batch, m))) for m in self.modalities], dim=1)

    def sizes(self, batch: Mapping[str, Any]) -> dict[str, int]:
        """Queries per modality for this batch (a drawn subset counts its size), in concatenation order."""
        sizes = {}
        for m in self.modalities:
            view = modality_view(batch, m)
            index = view.get("query_index")
            sizes[m] = index.shape[1] if index is not None else self.queries[m].num_queries
        return sizes


def modality_view(batch: Mapping[str, Any], modality: str) -> dict[str, Any]:
    """The batch as one modality's query module sees it: its own inputs and its own query subset."""
    view = dict(batch)
    inputs = batch.get("inputs")
    if isinstance(inputs, Mapping) and modality in inputs:
        view["inputs"] = inputs[modality]
    index = batch.get("query_index")
    if isinstance(index, Mapping):
        if modality in index:
            view["query_index"] = index[modality]
        else:
            view.pop("query_index")
    return view


def split_modalities(x: torch.Tensor, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """(B, sum sizes, ...) -> {modality: (B, size, ...)}, in the order `sizes` lists them (DeepMind's restructure)."""
    if x.shape[1] != sum(sizes.values()):
        raise ValueError(f"{x.shape[1]} positions cannot be split into modalities of sizes {dict(sizes)}")
    return dict(zip(sizes, x.split(list(sizes.values()), dim=1)))
