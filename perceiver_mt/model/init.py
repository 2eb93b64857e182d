"""Weight initialisation shared by the encoder, decoders and task parts.

Linear layers start from a truncated normal with variance 1/fan_in and zero bias, the variance
scaling of the DeepMind original. PyTorch's default (variance 1/(3 fan_in)) makes the first
cross-attention almost uniform over the inputs, so every latent starts as nearly the same average
and training stalls for epochs before attention becomes selective.
"""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def fan_in_init_(module: nn.Module) -> nn.Module:
    """Re-initialise every nn.Linear inside `module` in place; returns the module."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            std = 1.0 / math.sqrt(layer.in_features)
            nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


@torch.no_grad()
def sharpen_queries_(layer: nn.Module, gain: float, option: str) -> None:
    """Multiply a cross-attention layer's initial query weights by `gain` (> 0; the config `option` names it in
    the error): larger makes its first attention more selective than fan-in init alone."""
    if not gain > 0:
        raise ValueError(f"{option}={gain} must be > 0 (1 = fan-in init; larger = sharper first attention)")
    layer.attention.to_q.weight.mul_(gain)
