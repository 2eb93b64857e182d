"""Hugging Face Perceivers convert into this project's model exactly: same outputs on the same inputs (fp32)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from perceiver_mt.convert import ConversionError, convert_hf  # noqa: E402
from perceiver_mt.convert.__main__ import main as convert_main  # noqa: E402
from perceiver_mt.pretrained import from_pretrained  # noqa: E402

TOLERANCE = 1e-4  # max absolute difference, fp32
SMALL = dict(num_latents=8, d_latents=32, d_model=16, num_self_attends_per_block=2, num_self_attention_heads=2,
             num_cross_attention_heads=2, qk_channels=16, v_channels=32)


def saved_hf_model(cls: type, folder, **config) -> torch.nn.Module:
    """A randomly initialised transformers model, every parameter perturbed (LayerNorms are not the identity,
    biases not zero), written with save_pretrained."""
    torch.manual_seed(0)
    model = cls(transformers.PerceiverConfig(**config)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for name, b in model.named_buffers():  # batch-norm statistics too
            if name.endswith(("running_mean", "running_var")):
                b.add_(torch.rand_like(b))
    model.save_pretrained(str(folder))
    return model


def converted(hf_folder, tmp_path, *extra):
    out = tmp_path / "ours"
    assert convert_main(["hf", str(hf_folder), "--out", str(out), *extra]) == 0
    model, config = from_pretrained(out)
    return model, config


def test_masked_lm_logits_match(tmp_path):
    hf = saved_hf_model(transformers.PerceiverForMaskedLM, tmp_path / "hf", **SMALL, max_position_embeddings=24)
    ours, config = converted(tmp_path / "hf", tmp_path)
    assert config.tasks["mlm"].plugin == "byte_mlm"
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (3, 24), generator=g)
    ids[0, 5:9] = 256  # MASK
    ids[1, 17:] = 257  # PAD: masked out of the encoder's attention
    hf_ids = torch.tensor([6, 3, 0]).new_tensor([*range(6, 262), 3, 0])[ids]
    with torch.no_grad():
        expected = hf(inputs=hf_ids, attention_mask=(ids != 257).long()).logits[..., 6:]
        got = ours("mlm", {"inputs": ids})
    assert got.shape == expected.shape == (3, 24, 256)
    assert (got - expected).abs().max() < TOLERANCE


def test_bare_encoder_latents_match(tmp_path):
    hf = saved_hf_model(transformers.PerceiverModel, tmp_path / "hf", **SMALL)
    ours, config = converted(tmp_path / "hf", tmp_path)
    assert config.tasks == {}
    inputs = torch.randn(2, 11, 16, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 7:] = 0
    with torch.no_grad():
        expected = hf(inputs=inputs, attention_mask=mask).last_hidden_state
        got = ours.encoder(inputs, mask == 0)
    assert (got - expected).abs().max() < TOLERANCE


IMAGE_CLASSIFIERS = [  # (class, image size, our encoder's input width)
    ("PerceiverForImageClassificationFourier", 12, 261),
    ("PerceiverForImageClassificationConvProcessing", 32, 322),
    ("PerceiverForImageClassificationLearned", 8, 512),
]


@pytest.mark.parametrize("architecture, size, channels", IMAGE_CLASSIFIERS)
def test_image_classifier_logits_match(tmp_path, architecture, size, channels):
    hf = saved_hf_model(getattr(transformers, architecture), tmp_path / "hf", **SMALL, image_size=size, num_labels=5)
    hf.train(False)
    extra = [] if "Learned" in architecture else ["--image-size", str(size), str(size)]
    ours, config = converted(tmp_path / "hf", tmp_path, *extra)
    assert config.model.input_channels == channels and config.tasks["imagenet"].plugin == "image_classification"
    images = torch.rand(2, size, size, 3, generator=torch.Generator().manual_seed(3))  # ours: (B, H, W, C) in [0, 1]
    normalised = (images - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():
        expected = hf(inputs=normalised.permute(0, 3, 1, 2)).logits  # HF: (B, C, H, W), as its image processor gives
        got = ours("imagenet", {"inputs": images})
    assert got.shape == expected.shape == (2, 5)
    assert (got - expected).abs().max() < TOLERANCE


def hf_flow_patches(frames: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W, 3) uint8 frames -> HF's flow input (B, 2, 27, H, W): each pixel's 3x3 patch, values (row,
    column, colour), frames scaled to [-1, 1] and zero-padded (DeepMind's example), by slicing (not our code)."""
    H, W = frames.shape[2:4]
    padded = torch.nn.functional.pad(frames.double() / 127.5 - 1, (0, 0, 1, 1, 1, 1))  # pads W, then H
    patches = torch.stack([padded[:, :, r:r + H, c:c + W] for r in range(3) for c in range(3)], dim=-2)
    return patches.flatten(-2).permute(0, 1, 4, 2, 3).float()  # (B, 2, 9 * 3, H, W)


@pytest.mark.parametrize("shape_for_attention", ["kv", pytest.param("q", marks=pytest.mark.slow)])
def test_optical_flow_matches(tmp_path, shape_for_attention):
    """DeepMind's flow network: HF's patches + conv_after_patches + Fourier features + per-pixel queries; the
    decoder's widths follow cross_attention_shape_for_attention ("q": the 322-wide queries)."""
    size = (6, 8)
    hf = saved_hf_model(transformers.PerceiverForOpticalFlow, tmp_path / "hf", **SMALL, train_size=list(size),
                        cross_attention_shape_for_attention=shape_for_attention)
    ours, config = converted(tmp_path / "hf", tmp_path)
    flow = config.tasks["optical_flow"]
    assert flow.plugin == "optical_flow" and config.model.input_channels == 322  # unprojected, as HF's encoder
    assert flow.options["output_scale"] == 100 and flow.options["image_size"] == list(size)
    frames = torch.randint(0, 256, (2, 2, *size, 3), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    with torch.no_grad():
        expected = hf(inputs=hf_flow_patches(frames)).logits  # (B, H, W, 2)
        got = ours("optical_flow", {"inputs": frames}).reshape(2, *size, 2)
    assert expected.shape == (2, *size, 2)
    assert expected.abs().max() > 1e-3  # a flow, not zeros
    assert (got - expected).abs().max() < TOLERANCE
    from perceiver_mt.inference import Predictor

    served = Predictor.from_pretrained(tmp_path / "ours").predict("optical_flow", *frames[1].numpy())  # two frames
    assert served.shape == (*size, 2) and (served - expected[1]).abs().max() < TOLERANCE


def test_optical_flow_checkpoint_with_other_patches_is_one_line(tmp_path):
    from safetensors.torch import load_file, save_file

    saved_hf_model(transformers.PerceiverForOpticalFlow, tmp_path / "hf", **SMALL, train_size=[6, 8])
    weights = tmp_path / "hf" / "model.safetensors"
    state = load_file(str(weights))
    state["perceiver.input_preprocessor.conv_after_patches.weight"] = torch.zeros(64, 27)  # one frame's patches
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"conv_after_patches maps 54 patch values .* weight is \(64, 27\)$"):
        convert_hf(tmp_path / "hf")


def test_unknown_architecture_is_one_line(tmp_path):
    transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                            architectures=["BertForMaskedLM"]).save_pretrained(tmp_path / "bert")
    with pytest.raises(ConversionError, match=r"holds a BertForMaskedLM \(bert\) checkpoint; convertible: .*PerceiverForMaskedLM"):
        convert_hf(tmp_path / "bert")


def test_checkpoint_with_parameters_nobody_maps_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    saved_hf_model(transformers.PerceiverForMaskedLM, tmp_path / "hf", **SMALL, max_position_embeddings=24)
    weights = tmp_path / "hf" / "model.safetensors"
    state = load_file(str(weights))
    state["perceiver.decoder.extra_projection.weight"] = torch.zeros(2, 2)
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(ConversionError, match="parameters this converter does not map: perceiver.decoder.extra_projection"):
        convert_hf(tmp_path / "hf")


def test_missing_source_is_one_line(tmp_path, capsys):
    assert convert_main(["hf", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot read a transformers config from") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_the_language_perceiver_example_config_describes_the_converted_encoder_and_tasks():
    """configs/from_language_perceiver.yaml must build what the converter writes for DeepMind's language Perceiver
    (HF's conversion of it sets qk_channels=256, v_channels=1280 on the default config), or init_from would
    silently start its encoder fresh."""
    from helpers import REPO
    from perceiver_mt.config import load_config
    from perceiver_mt.convert.hf_layers import encoder_config
    from perceiver_mt.convert.hf_text import MLM_DECODER_HEADS

    config = load_config(REPO / "configs" / "from_language_perceiver.yaml")
    language = transformers.PerceiverConfig(qk_channels=8 * 32, v_channels=1280)
    expected = encoder_config(language, language.d_model)
    assert {key: getattr(config.model, key) for key in expected} == expected
    mlm = config.tasks["pydoc_mlm"].options
    assert (mlm["seq_len"], mlm["decoder_heads"], mlm["query_channels"]) == (2048, MLM_DECODER_HEADS, 768)
    assert config.init_map == {"pydoc_mlm": "mlm", "languages": "mlm"}
