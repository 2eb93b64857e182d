"""Which attention computation runs where: PyTorch's fused kernels (SDPA) or two GEMMs and a softmax.

The choice depends on the device and the shapes, from measurements (docs/benchmarks.md), unless the
speed config (`speed.attention_kernel`) fixes one. Also here: CPU query folding, which makes PyTorch's
CPU attention backward use every thread when there are fewer (batch x heads) than threads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KERNELS = ("auto", "fused", "matmul")
FUSED_QUERY_BLOCK = 64  # queries per thread block in PyTorch's CUDA memory-efficient attention (fp32)
# CUDA's fused kernels are built for heads of up to 128 channels (flash: 256). Wider heads, like the one
# 512-channel head of DeepMind's per-pixel flow decoder, train 2-4x faster as GEMMs on an H200
# (docs/benchmarks.md, config C); their forward alone stays fused, where it is fast and needs no scores.
FUSED_MAX_HEAD_CHANNELS = 128


# What PyTorch's CUDA fused attention kernels take (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp):
# memory-efficient: q and k of one width, q's and v's widths divisible by 8 in 16-bit (4 in fp32), no upper
# bound; flash (16-bit only): q, k and v of one width, at most 256 (SDPA pads that one to a multiple of 8
# itself). Anything else runs SDPA's unfused math kernel, which materialises every score. Perceiver widths
# often miss: DeepMind's ImageNet cross-attention attends over 261 = 3 + 258 channels with one head, and the
# absorbed projection orders make heads as wide as the inputs (322 for optical flow) or the queries plus one.
FUSED_ALIGNMENT = 8  # 16-bit's alignment, a multiple of fp32's: right whichever dtype autocast hands SDPA
FLASH_MAX_HEAD_CHANNELS = 256


def finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    return x.masked_fill(~x.isfinite(), 0.0)


def matmul_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention as two matrix products and a softmax, with SDPA's signature and conventions."""
    scores = (q * (q.shape[-1] ** -0.5 if scale is None else scale)) @ k.transpose(-2, -1)  # (B, H, Q, K)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    probs = F.dropout(scores.softmax(dim=-1), dropout_p) if dropout_p else scores.softmax(dim=-1)
    return probs @ v


def attention_kernel(q: torch.Tensor, k: torch.Tensor, preferred: str = "auto") -> str:
    """"fused" (SDPA) or "matmul" for these shapes: the `preferred` kernel, or where that is "auto", the
    measured rule below."""
    if preferred != "auto":
        return preferred
    if q.device.type != "cuda":
        return "fused"  # CPU kernels split the work differently (see query_groups)
    B, H, Q, head_channels = q.shape
    multiprocessors = torch.cuda.get_device_properties(q.device).multi_processor_count
    training = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)
    return cuda_attention_kernel(B, H, Q, head_channels, k.shape[-2], q.dtype, multiprocessors, training)


def cuda_attention_kernel(
    batch: int, heads: int, queries: int, head_channels: int, keys: int, dtype: torch.dtype, multiprocessors: int,
    training: bool,
) -> str:
    """The faster attention on a CUDA GPU for these shapes, as measured on an H200 (docs/benchmarks.md)."""
    if fused_kernel_starves(batch, heads, queries, keys, dtype, multiprocessors):
        return "matmul"
    return "matmul" if training and head_channels > FUSED_MAX_HEAD_CHANNELS else "fused"


def fused_kernel_starves(
    batch: int, heads: int, queries: int, keys: int, dtype: torch.dtype, multiprocessors: int,
) -> bool:
    """Whether CUDA's fp32 fused attention would leave most of the GPU idle on these shapes.

    The memory-efficient kernel (the fused one fp32 gets) gives each (batch, head, block of 64 queries)
    to one multiprocessor, which walks every key. A Perceiver cross-attention with one head and a few
    hundred latents against tens of thousands of inputs makes fewer blocks than the GPU has
    multiprocessors, each walking a long row. Two GEMMs and a softmax spread over the whole GPU instead,
    at the cost of materialising the (B, H, Q, K) scores. Measured on an H200 (docs/benchmarks.md):
    config B trains 1.6x faster this way in fp32; in bf16 flash attention is faster than the GEMMs.
    """
    blocks = batch * heads * math.ceil(queries / FUSED_QUERY_BLOCK)
    return dtype == torch.float32 and blocks < multiprocessors and keys >= 8 * queries


def query_groups(q: torch.Tensor, k: torch.Tensor) -> int:
    """How many query blocks to fold into extra heads so CPU attention backward uses every thread.

    PyTorch's CPU flash-attention backward parallelises over batch x heads only, so one cross-attention
    head at batch 1 runs its (largest) backward on a single thread. With one head the extra heads' k and
    v are stride-0 views of the one k and v (no copy is saved for backward); with several heads they
    are copies, which is why folding is limited to training on CPU with fewer batch x heads than threads.
    """
    B, H, Q, _ = q.shape
    threads = torch.get_num_threads()
    if q.device.type != "cpu" or not torch.is_grad_enabled() or not (q.requires_grad or k.requires_grad):
        return 1
    if B * H >= threads:
        return 1
    groups = threads // (B * H)
    return groups if Q % groups == 0 and Q // groups >= 64 else 1


def fused_head_widths(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, device_type: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k (B, H, Q|K, Cqk) and v (B, H, K, Cv) with zero channels appended where a fused kernel of
    `device_type` needs them; the caller scales scores by the unpadded width and keeps v's first Cv channels.

    Zero q/k channels add nothing to any score and zero v channels only add output channels, so the result is
    the same function (and gradients) of the unpadded tensors. CPU: q/k and v of one width, which PyTorch's CPU
    flash attention needs. CUDA: both widths up to a multiple of FUSED_ALIGNMENT (the memory-efficient kernel),
    and one width for all three where that is at most 256 in 16-bit (flash attention).
    """
    qk_width, v_width = q.shape[-1], v.shape[-1]
    if device_type == "cpu":
        qk_width = v_width = max(qk_width, v_width)
    else:
        qk_width, v_width = (-(-width // FUSED_ALIGNMENT) * FUSED_ALIGNMENT for width in (qk_width, v_width))
        half = q.dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled(device_type)
        if half and max(qk_width, v_width) <= FLASH_MAX_HEAD_CHANNELS:
            qk_width = v_width = max(qk_width, v_width)
    if qk_width > q.shape[-1]:
        q, k = F.pad(q, (0, qk_width - q.shape[-1])), F.pad(k, (0, qk_width - k.shape[-1]))
    if v_width > v.shape[-1]:
        v = F.pad(v, (0, v_width - v.shape[-1]))
    return q, k, v
