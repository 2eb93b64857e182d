"""The benchmark configurations, shared by every implementation's adapter and by the FLOP formula.

Conventions follow DeepMind's Perceiver IO (and Hugging Face's port): encoder cross-attention computes
queries/keys/values in the *input* width (`cross_attention_shape_for_attention="kv"`), the decoder
cross-attention in the latent width; the decoder MLP has widening 1.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ClassifierConfig:
    """Configs A and B: inputs -> latents -> one learned query -> class logits."""

    name: str
    batch: int
    inputs: int  # M: input points per sample
    input_channels: int = 64  # C
    num_latents: int = 256  # N
    latent_channels: int = 512  # D
    cross_heads: int = 1
    self_heads: int = 8
    self_layers: int = 6
    widening: int = 4  # encoder cross- and self-attention MLPs
    num_classes: int = 1000


@dataclass(frozen=True)
class FlowConfig:
    """Config C: DeepMind's optical-flow Perceiver IO, one output query per pixel."""

    name: str
    batch: int = 1
    image: tuple[int, int] = (368, 496)
    patch_channels: int = 27  # 3x3 patch x 3 colours, per frame; two frames are concatenated
    patch_hidden: int = 64  # width of the projected patch before the Fourier features are appended
    num_bands: int = 64
    num_latents: int = 2048
    latent_channels: int = 512
    self_heads: int = 16
    self_layers: int = 24

    @property
    def inputs(self) -> int:
        return self.image[0] * self.image[1]

    @property
    def input_channels(self) -> int:
        return self.patch_hidden + 2 * (2 * self.num_bands + 1)  # 64 + 258 = 322


CONFIGS: dict[str, ClassifierConfig | FlowConfig] = {
    "A": ClassifierConfig("A", batch=8, inputs=4096),
    "B": ClassifierConfig("B", batch=4, inputs=50176),
    "C": FlowConfig("C"),
    # Seconds-long versions of the same shapes, for development and the smoke test.
    "tinyA": ClassifierConfig("tinyA", batch=2, inputs=256, input_channels=16, num_latents=16,
                              latent_channels=64, self_heads=4, self_layers=2, num_classes=10),
    # Hugging Face's flow model fixes 64 Fourier bands and a 64-wide patch projection, so tinyC keeps them.
    "tinyC": FlowConfig("tinyC", image=(12, 16), num_latents=32, latent_channels=64, self_heads=4, self_layers=2),
}


def sweep_config(inputs: int, batch: int = 1) -> ClassifierConfig:
    """Config A's network at `inputs` points: the scaling sweep."""
    base = CONFIGS["A"]
    assert isinstance(base, ClassifierConfig)
    return replace(base, name=f"sweep{inputs}", batch=batch, inputs=inputs)


def get_config(name: str) -> ClassifierConfig | FlowConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown benchmark config {name!r}; choose one of {', '.join(CONFIGS)}")
    return CONFIGS[name]
