"""Hugging Face `transformers` Perceiver parts -> this project's parts: parameter names and hyperparameters.

HF's `PerceiverLayer` is the same pre-norm block as ours (LayerNorm'd queries and inputs, q/k/v projections,
output projection, optional query residual, LayerNorm + GELU MLP with a residual), so a layer converts by
renaming its parameters. Every HF key a conversion reads is marked as consumed; `StateMapper.finish` fails in
one line on any key left over, so nothing is half-converted silently.
"""

from __future__ import annotations

from typing import Any

import torch

# Our layer's parameter -> HF's, relative to the layer. Self-attention has one LayerNorm before attention
# (HF's layernorm2 is an Identity there).
CROSS_ATTENTION_LAYER = {
    "q_norm": "attention.self.layernorm1",
    "kv_norm": "attention.self.layernorm2",
    "attention.to_q": "attention.self.query",
    "attention.to_k": "attention.self.key",
    "attention.to_v": "attention.self.value",
    "attention.to_out": "attention.output.dense",
    "mlp.net.0": "layernorm",
    "mlp.net.1": "mlp.dense1",
    "mlp.net.3": "mlp.dense2",
}
SELF_ATTENTION_LAYER = {("norm" if ours == "q_norm" else ours): theirs
                        for ours, theirs in CROSS_ATTENTION_LAYER.items() if ours != "kv_norm"}


class ConversionError(ValueError):
    """A checkpoint that does not convert, explained in one line."""


class StateMapper:
    """Builds our state dict from an HF one, remembering which HF keys were used."""

    def __init__(self, hf_state: dict[str, torch.Tensor], architecture: str):
        self.hf_state = hf_state
        self.architecture = architecture
        self.unused = set(hf_state)
        self.ours: dict[str, torch.Tensor] = {}

    def take(self, hf_key: str) -> torch.Tensor:
        if hf_key not in self.hf_state:
            raise ConversionError(f"{self.architecture} checkpoint has no parameter {hf_key!r}: not a checkpoint of "
                                  "this architecture, or one this converter does not know")
        self.unused.discard(hf_key)
        return self.hf_state[hf_key]

    def put(self, our_key: str, value: torch.Tensor) -> None:
        self.ours[our_key] = value.detach().clone()

    def copy(self, our_key: str, hf_key: str) -> torch.Tensor:
        value = self.take(hf_key)
        self.put(our_key, value)
        return value

    def copy_linear(self, ours: str, theirs: str) -> None:
        """weight and bias of one Linear or LayerNorm."""
        for part in ("weight", "bias"):
            self.copy(f"{ours}.{part}", f"{theirs}.{part}")

    def copy_layer(self, ours: str, theirs: str, names: dict[str, str]) -> None:
        for our_part, their_part in names.items():
            self.copy_linear(f"{ours}.{our_part}", f"{theirs}.{their_part}")

    def finish(self, ignored: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
        left = sorted(k for k in self.unused if not k.startswith(ignored))
        if left:
            more = f" and {len(left) - 3} more" if len(left) > 3 else ""
            raise ConversionError(f"{self.architecture} checkpoint has parameters this converter does not map: "
                                  f"{', '.join(left[:3])}{more}")
        return self.ours


def hf_option(config: Any, name: str) -> Any:
    return getattr(config, name, None)


def encoder_config(config: Any, input_channels: int) -> dict[str, Any]:
    """HF `PerceiverConfig` + the preprocessor's width  ->  our `EncoderConfig` fields.

    HF's encoder cross-attention sizes q/k by `cross_attention_shape_for_attention` ("kv": the inputs' width)
    unless `qk_channels` is set; its self-attention projects values back to `v_channels`, which must equal the
    latent width for its residual, exactly as ours requires.
    """
    if not config.use_query_residual:
        raise ConversionError("use_query_residual=False in the encoder cross-attention is not supported: this "
                              "project's encoder always adds the latents back after cross-attention")
    if config.hidden_act != "gelu":
        raise ConversionError(f"hidden_act={config.hidden_act!r} is not supported (this project's MLPs use exact GELU)")
    latent = config.d_latents
    shape_for_attention = {"kv": input_channels, "q": latent}.get(config.cross_attention_shape_for_attention)
    if shape_for_attention is None:
        raise ConversionError(f"cross_attention_shape_for_attention={config.cross_attention_shape_for_attention!r} "
                              "is unknown (HF allows 'kv' or 'q')")
    cross_qk = config.qk_channels or shape_for_attention
    self_qk = config.qk_channels or latent
    return {
        "input_channels": input_channels,
        "num_latents": config.num_latents,
        "latent_channels": latent,
        "num_cross_attention_heads": config.num_cross_attention_heads,
        "cross_attention_qk_channels": cross_qk,
        "cross_attention_v_channels": config.v_channels or cross_qk,
        "cross_attention_widening_factor": config.cross_attention_widening_factor,
        "num_cross_attends": 1,
        "num_self_attention_heads": config.num_self_attention_heads,
        "self_attention_qk_channels": self_qk,
        "self_attention_v_channels": config.v_channels or self_qk,
        "self_attention_widening_factor": config.self_attention_widening_factor,
        "num_self_attends_per_block": config.num_self_attends_per_block,
        "num_blocks": config.num_blocks,
        "dropout": 0.0,  # HF drops attention probabilities only; conversions are for inference and fine-tuning
    }


def copy_encoder(mapper: StateMapper, prefix: str, num_self_attends: int) -> None:
    """HF `PerceiverModel`'s latents and encoder under `prefix` (e.g. "perceiver.")  ->  our `encoder.*`."""
    mapper.copy("encoder.latents", f"{prefix}embeddings.latents")
    mapper.copy_layer("encoder.cross_attentions.0", f"{prefix}encoder.cross_attention", CROSS_ATTENTION_LAYER)
    for i in range(num_self_attends):
        mapper.copy_layer(f"encoder.self_attentions.{i}", f"{prefix}encoder.self_attends.{i}", SELF_ATTENTION_LAYER)


def copy_decoder_layer(mapper: StateMapper, task: str, hf_layer: str) -> None:
    """An HF decoder's `decoding_cross_attention`  ->  our task decoder's cross-attention layer."""
    mapper.copy_layer(f"tasks.{task}.decoder.cross_attention", hf_layer, CROSS_ATTENTION_LAYER)


def decoder_config(layer_state: StateMapper, hf_layer: str, num_heads: int, query_residual: bool,
                   widening_factor: int) -> dict[str, Any]:
    """Our `DecoderConfig` fields from the shapes of an HF decoder layer's projections."""
    query = layer_state.hf_state[f"{hf_layer}.attention.self.query.weight"]
    value = layer_state.hf_state[f"{hf_layer}.attention.self.value.weight"]
    return {"query_channels": query.shape[1], "num_heads": num_heads, "qk_channels": query.shape[0],
            "v_channels": value.shape[0], "query_residual": query_residual, "widening_factor": widening_factor}
