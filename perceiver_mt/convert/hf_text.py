"""`PerceiverModel` (bare encoder) and `PerceiverForMaskedLM` (DeepMind's language Perceiver) -> this project.

The masked LM becomes a `byte_mlm` task instance. HF's byte vocabulary puts six special tokens first
([PAD]=0, [BOS]=1, [EOS]=2, [MASK]=3, [CLS]=4, [SEP]=5) and byte b at b + 6; ours has bytes 0..255, then MASK
and PAD. The converted embedding takes HF's rows in our order, and the head is HF's tied embedding decoder
restricted to the 256 byte rows, so our logits equal HF's `logits[..., 6:]` on the same text.
"""

from __future__ import annotations

from typing import Any

import torch

from perceiver_mt.convert.hf_layers import StateMapper, copy_decoder_layer, copy_encoder, encoder_config

HF_SPECIAL_TOKENS = 6
HF_PAD, HF_MASK = 0, 3
NUM_BYTES = 256
# Our byte ids 0..255, MASK (256), PAD (257) -> HF token ids.
HF_ROWS_OF_OUR_VOCABULARY = [*range(HF_SPECIAL_TOKENS, HF_SPECIAL_TOKENS + NUM_BYTES), HF_MASK, HF_PAD]
# HF's masked LM decoder is fixed to 8 heads of 32 query/key channels (modeling_perceiver.PerceiverForMaskedLM).
MLM_DECODER_HEADS = 8


def convert_model(config: Any, state: dict[str, torch.Tensor]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A bare `PerceiverModel` (no preprocessor, no decoder): the shared encoder alone, inputs of d_model channels."""
    mapper = StateMapper(state, "PerceiverModel")
    strip = "perceiver." if any(k.startswith("perceiver.") for k in state) else ""
    copy_encoder(mapper, strip, config.num_self_attends_per_block)
    return {"model": encoder_config(config, config.d_model), "tasks": {}}, mapper.finish()


def convert_masked_lm(config: Any, state: dict[str, torch.Tensor], task: str = "mlm",
                      ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    mapper = StateMapper(state, "PerceiverForMaskedLM")
    copy_encoder(mapper, "perceiver.", config.num_self_attends_per_block)
    embeddings = mapper.take("perceiver.input_preprocessor.embeddings.weight")  # (262, d_model), tied to the head
    mapper.put(f"tasks.{task}.adapter.embed.weight", embeddings[HF_ROWS_OF_OUR_VOCABULARY])
    mapper.copy(f"tasks.{task}.adapter.position.embedding", "perceiver.input_preprocessor.position_embeddings.weight")
    mapper.copy(f"tasks.{task}.queries.position.embedding",
                "perceiver.decoder.output_position_encodings.position_embeddings")
    hf_layer = "perceiver.decoder.decoding_cross_attention"
    copy_decoder_layer(mapper, task, hf_layer)
    byte_rows = slice(HF_SPECIAL_TOKENS, HF_SPECIAL_TOKENS + NUM_BYTES)
    mapper.put(f"tasks.{task}.head.weight", embeddings[byte_rows])
    mapper.put(f"tasks.{task}.head.bias", mapper.take("embedding_decoder.bias")[byte_rows])
    query = state[f"{hf_layer}.attention.self.query.weight"]
    value = state[f"{hf_layer}.attention.self.value.weight"]
    options = {
        "seq_len": config.max_position_embeddings,
        "position": "learned",
        "query_context": 0,
        "query_channels": config.d_model,
        "decoder_heads": MLM_DECODER_HEADS,
        "decoder_qk_channels": query.shape[0],
        "decoder_v_channels": value.shape[0],
        "decoder_query_residual": False,
    }
    run = {"model": encoder_config(config, config.d_model), "tasks": {task: {"plugin": "byte_mlm", "options": options}}}
    return run, mapper.finish()
