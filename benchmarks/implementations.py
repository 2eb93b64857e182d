"""One adapter per Perceiver IO implementation, each building the SAME network for a benchmark config.

An adapter returns a `Bench`: the module, a call from the shared inputs to the outputs, and a loss.
Imports of the reference libraries happen inside the adapters, so a measurement process only loads
the library it measures. Where a library hard-codes a choice that differs from the config, the
adapter says what it changed and why (parameter counts are reported next to every result):

- lucidrains' `perceiver-pytorch` uses GEGLU MLPs (widening fixed at 4, two input projections). We
  keep GEGLU but size its hidden layer to 2/3 of `widening * D`, which gives the same parameter and
  FLOP count as a GELU MLP of the config's widening. Its decoder shares `cross_dim_head` with the
  encoder, so the decoder attention is rebuilt from its own `Attention` class at the latent width.
  It has no decoder MLP (2% fewer parameters than the others on config A).
- krasserm's `perceiver-io` and Hugging Face follow the config as is.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.configs import ClassifierConfig, FlowConfig

if TYPE_CHECKING:
    from perceiver_mt.speed import SpeedConfig

IMPLEMENTATIONS = ("ours", "hf", "krasserm", "lucidrains")


@dataclass
class Bench:
    model: nn.Module
    run: Callable[[torch.Tensor], torch.Tensor]  # shared inputs -> outputs

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def make_inputs(config: ClassifierConfig | FlowConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The same inputs and targets for every implementation."""
    g = torch.Generator().manual_seed(seed)
    if isinstance(config, FlowConfig):
        H, W = config.image
        frames = torch.randn(config.batch, 2, config.patch_channels, H, W, generator=g)
        return frames, torch.randn(config.batch, H, W, 2, generator=g)
    x = torch.randn(config.batch, config.inputs, config.input_channels, generator=g)
    return x, torch.randint(0, config.num_classes, (config.batch,), generator=g)


def loss_fn(config: ClassifierConfig | FlowConfig, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if isinstance(config, FlowConfig):
        return F.mse_loss(outputs, target)
    return F.cross_entropy(outputs, target)


# --- this project ---------------------------------------------------------------------------------------
CHUNK = 4096  # input points (and, for per-pixel outputs, queries) per chunk in the memory-saving variants


def build_ours(
    c: ClassifierConfig | FlowConfig, checkpointing: bool = False, chunked: bool = False, compile: bool = False,
    speed: SpeedConfig | None = None,
) -> Bench:
    """This project's model as training builds it: the reference model, the speedups (`speed`; default: the
    training defaults), then `parallelize`'s activation checkpointing and compile. `chunked`: the encoder
    cross-attends to CHUNK inputs at a time, each chunk recomputed in backward. Checkpointed per-pixel outputs
    are decoded CHUNK queries at a time as well, so together no activation over all 182k points of config C
    lives at once."""
    from benchmarks.classifier import build_classifier_model, classify
    from benchmarks.flow import build_flow_model, flow
    from perceiver_mt.speed import SpeedConfig, apply_speedups

    speed = speed or SpeedConfig()
    speed.input_chunk_size = CHUNK if chunked or checkpointing else None
    # Without checkpointing, chunks of queries save nothing: autograd keeps every chunk's activations.
    speed.query_chunk_size = CHUNK if checkpointing and isinstance(c, FlowConfig) else None
    model, run = (build_flow_model(c), flow) if isinstance(c, FlowConfig) else (build_classifier_model(c), classify)
    apply_speedups(model, speed)
    if checkpointing or compile:
        from perceiver_mt.parallelize import ParallelConfig, parallelize  # the model transforms, without Lightning

        parallelize(model, ParallelConfig(activation_checkpointing=checkpointing,
                                          compile="latent_layers" if compile else "none"))
    return Bench(model, lambda x: run(model, x))


# --- Hugging Face transformers ----------------------------------------------------------------------------
def build_hf(c: ClassifierConfig | FlowConfig, checkpointing: bool = False) -> Bench:
    from transformers import PerceiverConfig, PerceiverForOpticalFlow, PerceiverModel
    from transformers.models.perceiver.modeling_perceiver import PerceiverClassificationDecoder

    if isinstance(c, FlowConfig):
        config = PerceiverConfig(
            num_latents=c.num_latents, d_latents=c.latent_channels, d_model=c.input_channels, num_blocks=1,
            num_self_attends_per_block=c.self_layers, num_self_attention_heads=c.self_heads,
            num_cross_attention_heads=1, self_attention_widening_factor=1, cross_attention_widening_factor=1,
            train_size=list(c.image), attention_probs_dropout_prob=0.0,
        )
        flow = PerceiverForOpticalFlow(config)
        return Bench(flow, lambda frames: flow(inputs=frames).logits)
    config = PerceiverConfig(
        num_latents=c.num_latents, d_latents=c.latent_channels, d_model=c.input_channels, num_blocks=1,
        num_self_attends_per_block=c.self_layers, num_self_attention_heads=c.self_heads,
        num_cross_attention_heads=c.cross_heads, self_attention_widening_factor=c.widening,
        cross_attention_widening_factor=c.widening, num_labels=c.num_classes, attention_probs_dropout_prob=0.0,
    )
    decoder = PerceiverClassificationDecoder(
        config, num_channels=c.latent_channels, use_query_residual=True,
        trainable_position_encoding_kwargs=dict(num_channels=c.latent_channels, index_dims=1),
    )
    model = PerceiverModel(config, decoder=decoder)
    return Bench(model, lambda x: model(inputs=x).logits)


# --- krasserm/perceiver-io 0.11.0 -------------------------------------------------------------------------
def build_krasserm(c: ClassifierConfig | FlowConfig, checkpointing: bool = False) -> Bench:
    from perceiver.model.core import (
        ClassificationOutputAdapter, InputAdapter, PerceiverDecoder, PerceiverEncoder, PerceiverIO,
        TrainableQueryProvider,
    )

    if isinstance(c, FlowConfig):
        raise NotImplementedError("config C is compared against Hugging Face's PerceiverForOpticalFlow only")

    class Tokens(InputAdapter):  # the benchmark feeds ready-made tokens, as to every other implementation
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    encoder = PerceiverEncoder(
        Tokens(c.input_channels), num_latents=c.num_latents, num_latent_channels=c.latent_channels,
        num_cross_attention_heads=c.cross_heads, num_cross_attention_qk_channels=c.input_channels,
        num_cross_attention_v_channels=c.input_channels, cross_attention_widening_factor=c.widening,
        num_self_attention_heads=c.self_heads, num_self_attention_layers_per_block=c.self_layers,
        self_attention_widening_factor=c.widening, activation_checkpointing=checkpointing,
    )
    decoder = PerceiverDecoder(
        ClassificationOutputAdapter(c.num_classes, c.latent_channels), TrainableQueryProvider(1, c.latent_channels),
        num_latent_channels=c.latent_channels, num_cross_attention_heads=1, activation_checkpointing=checkpointing,
    )
    model = PerceiverIO(encoder, decoder)
    return Bench(model, model)


# --- lucidrains/perceiver-pytorch -------------------------------------------------------------------------
@contextlib.contextmanager
def _parameter_matched_geglu(widening: int) -> Iterator[None]:
    """While building, lucidrains' blocks get GEGLU MLPs with the parameters/FLOPs of a GELU MLP of `widening`."""
    import perceiver_pytorch.perceiver_pytorch as lucid

    class MatchedFeedForward(nn.Module):
        def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
            super().__init__()
            hidden = round(2 * widening * dim / 3)  # 3 * hidden * dim == 2 * widening * dim * dim
            self.net = nn.Sequential(
                nn.Linear(dim, 2 * hidden), lucid.GEGLU(), nn.Linear(hidden, dim), nn.Dropout(dropout)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    original = lucid.FeedForward
    lucid.FeedForward = MatchedFeedForward
    try:
        yield
    finally:
        lucid.FeedForward = original


class LucidrainsClassifier(nn.Module):
    def __init__(self, c: ClassifierConfig):
        super().__init__()
        from perceiver_pytorch.perceiver_io import Attention, PerceiverIO, PreNorm

        with _parameter_matched_geglu(c.widening):
            self.perceiver = PerceiverIO(
                depth=c.self_layers, dim=c.input_channels, queries_dim=c.latent_channels, logits_dim=c.num_classes,
                num_latents=c.num_latents, latent_dim=c.latent_channels, cross_heads=c.cross_heads,
                latent_heads=c.self_heads, cross_dim_head=c.input_channels // c.cross_heads,
                latent_dim_head=c.latent_channels // c.self_heads,
            )
        self.perceiver.decoder_cross_attn = PreNorm(
            c.latent_channels, Attention(c.latent_channels, c.latent_channels, heads=1, dim_head=c.latent_channels),
            context_dim=c.latent_channels,
        )
        self.query = nn.Parameter(torch.randn(1, c.latent_channels) * 0.02)  # the caller owns queries there

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.perceiver(x, queries=self.query)[:, 0]


def build_lucidrains(c: ClassifierConfig | FlowConfig, checkpointing: bool = False) -> Bench:
    if isinstance(c, FlowConfig):
        raise NotImplementedError("config C is compared against Hugging Face's PerceiverForOpticalFlow only")
    if checkpointing:
        raise NotImplementedError("perceiver-pytorch has no activation checkpointing option")
    model = LucidrainsClassifier(c)
    return Bench(model, model)


BUILDERS = {"ours": build_ours, "hf": build_hf, "krasserm": build_krasserm, "lucidrains": build_lucidrains}


OURS_ONLY = {"chunk", "compile", "fused", "matmul", "projected", "reference", "unpadded"}


def build(implementation: str, config: ClassifierConfig | FlowConfig) -> Bench:
    """`implementation` is one of IMPLEMENTATIONS, optionally with options: "+ckpt" (activation
    checkpointing), and for ours "+chunk" (cross-attention over inputs in chunks, see `build_ours`),
    "+compile" (torch.compile of the latent layers), "+fused" / "+matmul" (every attention through
    SDPA's fused kernels / through two GEMMs, instead of choosing per shape), "+projected" (every
    attention multiplies its projections in the order the other implementations use) and "+reference"
    (no speedups at all: the reference model as perceiver_mt/model/ writes it), "+unpadded" (CUDA: SDPA gets
    head widths as they are, `speed.pad_heads=false`)."""
    name, *options = implementation.split("+")
    chosen = set(options)
    speedups = {"chunk", "fused", "matmul", "projected", "unpadded"}
    if (name not in BUILDERS or not chosen <= {"ckpt"} | OURS_ONLY or (chosen & OURS_ONLY and name != "ours")
            or {"fused", "matmul"} <= chosen or ("reference" in chosen and chosen & speedups)):
        raise ValueError(f"unknown implementation {implementation!r}; choose one of {', '.join(IMPLEMENTATIONS)}, "
                         "optionally +ckpt, and for ours +chunk, +compile, +projected, +fused or +matmul, +unpadded, "
                         "or +reference")
    torch.manual_seed(0)
    if name != "ours":
        return BUILDERS[name](config, checkpointing="ckpt" in chosen)
    from perceiver_mt.speed import SpeedConfig

    speed = SpeedConfig(
        enabled="reference" not in chosen,
        projection_order="projected" if "projected" in chosen else "cheapest",
        attention_kernel=next((o for o in options if o in ("fused", "matmul")), "auto"),
        pad_heads="unpadded" not in chosen,
    )
    return build_ours(config, checkpointing="ckpt" in chosen, chunked="chunk" in chosen, compile="compile" in chosen,
                      speed=speed)
