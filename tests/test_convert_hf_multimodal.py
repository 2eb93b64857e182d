"""Hugging Face's PerceiverForMultimodalAutoencoding converts into the av_autoencoding task exactly: the same
audio, video and label outputs on the same inputs (fp32), decoding every query or a subset of them."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from perceiver_mt.convert import ConversionError, convert_hf  # noqa: E402
from perceiver_mt.model.multitask import MultiTaskPerceiver  # noqa: E402
from perceiver_mt.plugins import build_tasks  # noqa: E402
from perceiver_mt.pretrained import load_pretrained_state, load_strictly  # noqa: E402

from test_convert_hf import SMALL, TOLERANCE, converted, saved_hf_model  # noqa: E402

FRAMES, HEIGHT, WIDTH, SAMPLES_PER_FRAME, PER_PATCH, LABELS = 2, 8, 12, 32, 16, 5
MULTIMODAL = dict(num_frames=FRAMES, audio_samples_per_frame=SAMPLES_PER_FRAME, samples_per_patch=PER_PATCH,
                  output_shape=[1, FRAMES, HEIGHT, WIDTH], image_size=8, num_labels=LABELS, output_num_channels=24)
AUDIO_QUERIES, IMAGE_QUERIES = FRAMES * SAMPLES_PER_FRAME // PER_PATCH, FRAMES * HEIGHT * WIDTH


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multimodal")
    hf = saved_hf_model(transformers.PerceiverForMultimodalAutoencoding, folder / "hf", **SMALL, **MULTIMODAL)
    ours, config = converted(folder / "hf", folder)
    return hf, ours, config, folder / "ours"


def window(batch: int = 2) -> tuple[dict, dict]:
    """The same window for both: ours takes uint8 frames (B, T, H, W, 3) and samples (B, S); HF pixels in [0, 1]
    as (B, T, 3, H, W), samples as (B, S, 1) and a (masked) one-hot label."""
    g = torch.Generator().manual_seed(4)
    frames = torch.randint(0, 256, (batch, FRAMES, HEIGHT, WIDTH, 3), generator=g, dtype=torch.uint8)
    audio = torch.randn(batch, FRAMES * SAMPLES_PER_FRAME, generator=g) * 0.3
    hf_inputs = {"image": frames.float().div(255).permute(0, 1, 4, 2, 3), "audio": audio[..., None],
                 "label": torch.zeros(batch, LABELS)}
    return {"inputs": {"audio": audio, "image": frames}}, hf_inputs


def assert_same(got: dict, expected: dict) -> None:
    pairs = {"audio": (got["audio"].reshape(len(got["audio"]), -1), expected["audio"]),
             "image": (got["image"], expected["image"]), "label": (got["label"][:, 0], expected["label"])}
    for modality, (ours, theirs) in pairs.items():
        assert ours.shape == theirs.shape, modality
        assert (ours - theirs).abs().max() < TOLERANCE, (modality, (ours - theirs).abs().max().item())


@pytest.mark.slow
def test_every_modality_matches_decoding_all_queries(models):
    hf, ours, config, _ = models
    options = config.tasks["av_autoencoding"].options
    assert config.tasks["av_autoencoding"].plugin == "av_autoencoding" and options["query_positions"] == "index"
    assert (options["audio_bands"], options["image_bands"], options["num_labels"]) == (192, 32, LABELS)
    batch, hf_inputs = window()
    everything = {"audio": torch.arange(AUDIO_QUERIES), "image": torch.arange(IMAGE_QUERIES), "label": None}
    with torch.no_grad():
        expected = hf(inputs=hf_inputs, subsampled_output_points=everything).logits
        got = ours("av_autoencoding", batch)
    assert got["image"].shape == (2, IMAGE_QUERIES, 3) and got["audio"].shape == (2, AUDIO_QUERIES, PER_PATCH)
    assert_same(got, expected)


@pytest.mark.slow
def test_every_modality_matches_decoding_a_subset(models):
    """HF's chunked decoding (one subset of output points per modality, the whole batch) against our
    subsampled decoding: a converted model whose training subsets have those sizes."""
    hf, _, config, folder = models
    config = copy.deepcopy(config)
    config.tasks["av_autoencoding"].options.update(train_image_queries=50, train_audio_queries=3)
    ours = MultiTaskPerceiver(config.model, build_tasks(config))
    load_strictly(ours, load_pretrained_state(folder), str(folder))
    ours.eval()
    batch, hf_inputs = window()
    g = torch.Generator().manual_seed(5)
    subset = {"audio": torch.randperm(AUDIO_QUERIES, generator=g)[:3].sort().values,
              "image": torch.randperm(IMAGE_QUERIES, generator=g)[:50].sort().values}
    with torch.no_grad():
        expected = hf(inputs=hf_inputs, subsampled_output_points={**subset, "label": None}).logits
        got = ours("av_autoencoding", {**batch, "query_index": {m: i.expand(2, -1) for m, i in subset.items()}})
    assert_same(got, expected)


def test_weights_that_do_not_fit_the_config_are_refused_in_one_line(tmp_path):
    from safetensors.torch import load_file, save_file

    saved_hf_model(transformers.PerceiverForMultimodalAutoencoding, tmp_path / "hf", **SMALL, **MULTIMODAL)
    weights = tmp_path / "hf" / "model.safetensors"
    state = load_file(str(weights))
    state["perceiver.output_postprocessor.modalities.audio.classifier.weight"] = torch.zeros(8, 24)
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"^PerceiverForMultimodalAutoencoding checkpoint's perceiver\.output_"
                                              r"postprocessor\.modalities\.audio\.classifier\.weight has shape \(8, 24\), "
                                              r"but its config implies \(16, 24\)"):
        convert_hf(tmp_path / "hf")
