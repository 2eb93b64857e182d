"""The byte MLM task's modelling choices: position codes and output queries with input-byte context."""

from __future__ import annotations

import pytest
import torch

from perceiver_mt.model import EncoderConfig, MultiTaskPerceiver
from perceiver_mt.model.attention import MultiHeadAttention
from perceiver_mt.speed import SpeedConfig, apply_speedups
from tasks.byte_mlm import PAD_ID, ByteMLMOptions, ByteMLMTask

SEQ_LEN = 16


def make_task(**options: object) -> ByteMLMTask:
    return ByteMLMTask("mlm", ByteMLMOptions(seq_len=SEQ_LEN, query_channels=8, num_bands=4, **options),
                       EncoderConfig(input_channels=12))


def random_ids(batch: int = 2) -> torch.Tensor:
    return torch.randint(0, 256, (batch, SEQ_LEN), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("position", ["fourier", "learned"])
def test_adapter_and_queries_have_one_vector_per_byte(position: str) -> None:
    task = make_task(position=position, query_context=1)
    ids = random_ids()
    ids[1, -3:] = PAD_ID
    tokens, pad_mask = task.build_adapter()({"inputs": ids})
    queries = task.build_queries()({"inputs": ids})
    assert tokens.shape == (2, SEQ_LEN, 12)
    assert queries.shape == (2, SEQ_LEN, 8)
    assert pad_mask[1, -3:].all() and not pad_mask[0].any()


def test_fourier_positions_tell_every_byte_apart_from_the_start() -> None:
    codes = make_task(position="fourier").build_adapter().position(1)[0]  # (L, C), untrained
    distances = torch.cdist(codes, codes) + torch.eye(SEQ_LEN) * 1e9
    assert distances.min() > 0.1


def test_unknown_position_names_the_choices() -> None:
    with pytest.raises(ValueError, match="position='rotary'.*fourier, learned"):
        make_task(position="rotary").build_adapter()


@pytest.mark.parametrize("context", [0, 2])
def test_query_sees_exactly_its_context_window(context: int) -> None:
    queries = make_task(query_context=context).build_queries()
    ids = random_ids(1)
    changed = ids.clone()
    changed[0, 8] = (changed[0, 8] + 1) % 256
    delta = (queries({"inputs": changed}) - queries({"inputs": ids}))[0].abs().sum(-1)  # (L,)
    touched = (delta > 0).nonzero().flatten().tolist()
    assert touched == list(range(8 - context, 8 + context + 1)) if context else touched == []


def test_decoding_in_chunks_gives_the_same_logits_and_gradients() -> None:
    """speed.query_chunk_size: the byte head runs per chunk of positions (here 4 chunks of 4)."""
    encoder = EncoderConfig(input_channels=12, num_latents=4, latent_channels=16, num_self_attends_per_block=1)
    batch = {"inputs": random_ids()}
    results = []
    for chunk in (None, 4):
        torch.manual_seed(0)
        task = ByteMLMTask("mlm", ByteMLMOptions(seq_len=SEQ_LEN, query_channels=8, num_bands=4, query_context=1),
                           encoder)
        model = apply_speedups(MultiTaskPerceiver(encoder, {"mlm": task}), SpeedConfig(query_chunk_size=chunk))
        logits = model("mlm", batch)
        logits.square().mean().backward()
        results.append((logits.detach(), [p.grad for p in model.parameters()]))
    (whole, whole_grads), (chunked, chunked_grads) = results
    assert whole.shape == (2, SEQ_LEN, 256)
    torch.testing.assert_close(chunked, whole)
    for a, b in zip(chunked_grads, whole_grads):
        torch.testing.assert_close(a, b)


def test_the_speed_attention_kernel_reaches_the_task_decoders() -> None:
    """speed.attention_kernel applies to every attention, the task's decoder included; results agree."""
    outputs = {}
    encoder = EncoderConfig(input_channels=12, num_latents=4, latent_channels=16, num_self_attends_per_block=1)
    for kernel in ("fused", "matmul"):
        torch.manual_seed(0)
        model = apply_speedups(MultiTaskPerceiver(encoder, {"mlm": make_task(query_context=1)}),
                               SpeedConfig(attention_kernel=kernel))
        assert {m.kernel for m in model.modules() if isinstance(m, MultiHeadAttention)} == {kernel}
        outputs[kernel] = model("mlm", {"inputs": random_ids()})
    torch.testing.assert_close(outputs["matmul"], outputs["fused"])
