"""Parts of the audio-video autoencoder that the modality kit does not hold: the masked label input, the
per-modality output heads, and PSNR against the best constant prediction.

DeepMind's Kinetics autoencoder (and Hugging Face's `PerceiverForMultimodalAutoencoding`) decodes every
modality with one shared decoder whose outputs go through one shared Linear (`final`, HF's
`decoder.decoder.final_layer`) and then one Linear per modality (HF's `output_postprocessor.modalities.<m>`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn
from torchmetrics import Metric

from perceiver_mt.model import fourier_features
from perceiver_mt.modalities import GridQueries, split_modalities


class MaskedLabel(nn.Module):
    """The label modality's input, always masked (DeepMind's mask probability 1 for labels): whatever the batch
    holds, one token per sample made of a trainable vector of `num_labels` channels, which the multimodal
    padding then extends. The autoencoder so never sees the label and must predict it: a classifier.

    (Hugging Face keeps the whole padded mask token as `input_preprocessor.mask.label`: its first num_labels
    channels are `mask` here, the rest this modality's padding.)
    """

    def __init__(self, num_labels: int):
        super().__init__()
        self.mask = nn.Parameter(torch.empty(num_labels))
        nn.init.trunc_normal_(self.mask, std=0.02, a=-0.04, b=0.04)

    @property
    def num_channels(self) -> int:
        return self.mask.shape[0]

    @property
    def num_tokens(self) -> int:
        return 1

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.mask.expand(len(labels), 1, -1)  # (B, 1, num_labels)


def index_grid_queries(index_dims: Sequence[int], channels: None, num_bands: int,
                       max_resolution: Sequence[int]) -> GridQueries:
    """`GridQueries` of raw Fourier features whose point i of an axis of n sits at -1 + 2 i / n, not at the grid's
    -1 + 2 i / (n - 1): Hugging Face's `PerceiverBasicDecoder.decoder_query` with `subsampled_output_points`
    (its multimodal autoencoder decodes only that way). Subsets still take their rows from the full table."""
    queries = GridQueries(index_dims, channels, num_bands=num_bands, max_resolution=max_resolution)
    axes = [torch.arange(n, dtype=torch.float64) * 2 / n - 1 for n in index_dims]
    positions = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(index_dims))
    table = queries.table
    table.features = fourier_features(positions, **table.feature_options).float()
    return queries


class ModalityHeads(nn.Module):
    """Decoder outputs (B, O, Cq) of all modalities' queries  ->  {modality: (B, O_m, outputs_m)}.

    One shared Linear to `output_channels`, then each modality's own Linear on that modality's queries only.
    Which queries belong to which modality follows from O: `layouts` lists the per-modality query counts a
    forward may decode (all of them in evaluation, the training subsets), and a layout's total identifies it.
    """

    def __init__(self, query_channels: int, output_channels: int, outputs: Mapping[str, int],
                 layouts: Sequence[Mapping[str, int]]):
        super().__init__()
        self.final = nn.Linear(query_channels, output_channels)
        self.modalities = nn.ModuleDict({m: nn.Linear(output_channels, n) for m, n in sorted(outputs.items())})
        self.layouts = {sum(layout.values()): dict(layout) for layout in layouts}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        sizes = self.layouts.get(x.shape[1])
        if sizes is None:
            raise ValueError(f"{x.shape[1]} decoded queries match no layout of the modalities "
                             f"({', '.join(f'{o}: {l}' for o, l in self.layouts.items())}); per-modality heads cannot "
                             "run on chunks of queries (speed.query_chunk_size)")
        return {m: self.modalities[m](self.final(part)) for m, part in split_modalities(x, sizes).items()}


class ReconstructionPSNR(Metric):
    """10 log10(peak^2 / MSE) over every value seen (values, not samples, weigh equally)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, peak: float = 1.0) -> None:
        super().__init__()
        self.peak = peak
        self.add_state("squared_error", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.squared_error += (preds.double() - target.double()).pow(2).sum()
        self.count += target.numel()

    def compute(self) -> torch.Tensor:
        mse = self.squared_error / self.count.clamp(min=1)
        return (10 * torch.log10(self.peak ** 2 / mse.clamp(min=1e-20))).float()


class MeanPredictionPSNR(Metric):
    """PSNR of predicting, for every value, its channel's mean over all the evaluated data: the best any
    constant prediction can do, so an upper bound on the mean-prediction baseline. Last dim = channels."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, channels: int, peak: float = 1.0) -> None:
        super().__init__()
        self.peak = peak
        for name in ("total", "squares", "count"):
            self.add_state(name, torch.zeros(channels, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        values = target.double().reshape(-1, self.total.shape[0])
        self.total += values.sum(0)
        self.squares += values.pow(2).sum(0)
        self.count += len(values)

    def compute(self) -> torch.Tensor:
        count = self.count.clamp(min=1)
        squared_error = (self.squares - self.total ** 2 / count).sum()  # sum of (x - channel mean)^2
        mse = squared_error / count.sum()
        return (10 * torch.log10(self.peak ** 2 / mse.clamp(min=1e-20))).float()
