"""Converting Hugging Face `transformers` Perceivers into this project's pretrained folders.

    python -m perceiver_mt.convert hf SRC --out DIR

SRC is a folder written by `save_pretrained` (or a hub name where the network allows). The architecture
named in its config picks the converter; the result is this project's shared encoder plus the matching
task instance (adapter, queries, decoder, head), written as a pretrained folder (`perceiver_mt.pretrained`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from perceiver_mt.convert.hf_flow import convert_optical_flow
from perceiver_mt.convert.hf_images import convert_conv, convert_fourier, convert_learned
from perceiver_mt.convert.hf_layers import ConversionError
from perceiver_mt.convert.hf_multimodal import convert_multimodal_autoencoding
from perceiver_mt.convert.hf_text import convert_masked_lm, convert_model

Converter = Callable[..., tuple[dict[str, Any], dict[str, torch.Tensor]]]
CONVERTERS: dict[str, Converter] = {
    "PerceiverModel": convert_model,
    "PerceiverForMaskedLM": convert_masked_lm,
    "PerceiverForImageClassificationFourier": convert_fourier,
    "PerceiverForImageClassificationConvProcessing": convert_conv,
    "PerceiverForImageClassificationLearned": convert_learned,
    "PerceiverForOpticalFlow": convert_optical_flow,
    "PerceiverForMultimodalAutoencoding": convert_multimodal_autoencoding,
}
# Converters that take the image size (their HF config does not fix it).
IMAGE_CONVERTERS = {"PerceiverForImageClassificationFourier", "PerceiverForImageClassificationConvProcessing",
                    "PerceiverForImageClassificationLearned"}

__all__ = ["CONVERTERS", "ConversionError", "Converted", "convert_hf", "load_hf"]


@dataclass
class Converted:
    architecture: str
    config: dict[str, Any]  # RunConfig fields: "model" (EncoderConfig) and "tasks"
    state: dict[str, torch.Tensor]  # MultiTaskPerceiver state dict


def load_hf(source: str | Path) -> tuple[str, Any, dict[str, torch.Tensor]]:
    """(architecture, HF config, state dict) of a transformers Perceiver checkpoint."""
    try:
        import transformers
    except ImportError:
        raise ConversionError("converting Hugging Face checkpoints needs transformers: pip install transformers") from None
    try:
        config = transformers.AutoConfig.from_pretrained(str(source))
    except (OSError, ValueError) as error:
        raise ConversionError(f"cannot read a transformers config from {str(source)!r}: "
                              f"{str(error).strip().splitlines()[0]}") from None
    architectures = getattr(config, "architectures", None) or ["PerceiverModel"]
    architecture = architectures[0]
    if getattr(config, "model_type", None) != "perceiver" or architecture not in CONVERTERS:
        raise ConversionError(f"{str(source)!r} holds a {architecture} ({getattr(config, 'model_type', '?')}) "
                              f"checkpoint; convertible: {', '.join(CONVERTERS)}")
    return architecture, config, read_weights(source)


def read_weights(source: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors exactly as stored (not through `from_pretrained`, which would drop unknown
    parameters and randomly initialise missing ones without failing)."""
    folder = Path(source)
    if not folder.is_dir():  # a hub name: fetch the files (needs the network)
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(str(source), allow_patterns=["*.json", "*.safetensors", "*.bin"]))
    from safetensors.torch import load_file

    shards = sorted(folder.glob("model*.safetensors"))
    if shards:
        return {k: v for shard in shards for k, v in load_file(str(shard)).items()}
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bins:
        return {k: v for shard in bins for k, v in torch.load(shard, map_location="cpu", weights_only=True).items()}
    raise ConversionError(f"{str(source)!r} has no model*.safetensors or pytorch_model*.bin weights")


def convert_hf(source: str | Path, image_size: tuple[int, int] | None = None) -> Converted:
    """`image_size` (H, W): the input size of image classifiers whose config does not fix it (default 224 x 224)."""
    architecture, config, state = load_hf(source)
    options = {"image_size": image_size} if architecture in IMAGE_CONVERTERS else {}
    if image_size is not None and not options:
        raise ConversionError(f"--image-size applies to image classifiers, not to {architecture}")
    run_config, our_state = CONVERTERS[architecture](config, state, **options)
    return Converted(architecture, run_config, our_state)
