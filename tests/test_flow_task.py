"""The optical-flow task: DeepMind's patch order, subsampled decoding equal to full decoding, one-line
errors for bad input, prediction from two frames, and a short training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perceiver_mt.config import load_config
from perceiver_mt.inference import Predictor
from perceiver_mt.system import MultiTaskSystem
from tasks.optical_flow import frame_patches

from helpers import REPO

MEDIA_CONFIG = REPO / "configs" / "debug_media.yaml"


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> MultiTaskSystem:
    torch.manual_seed(0)
    config = load_config(MEDIA_CONFIG, [f"output_dir={tmp_path_factory.mktemp('run')}", "logger.kind=none"])
    return MultiTaskSystem.from_config(config).eval()


def frames(batch: int = 2, size: tuple[int, int] = (16, 24), seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 2, *size, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_patches_are_both_frames_3x3_neighbourhoods_in_deepmind_order():
    x = frames(1, (5, 6))
    patches = frame_patches(x).reshape(5, 6, 2, 3, 3, 3)  # (H, W, frame, row, column, colour)
    padded = np.pad(x[0].float().numpy() / 127.5 - 1, ((0, 0), (1, 1), (1, 1), (0, 0)))  # zeros outside
    for i, j in [(0, 0), (2, 3), (4, 5)]:
        expected = padded[:, i:i + 3, j:j + 3, :]  # (frame, row, column, colour)
        np.testing.assert_allclose(patches[i, j].numpy(), expected, atol=1e-6)


def test_subsampled_decoding_equals_full_decoding_at_the_sampled_pixels(system):
    batch = {"inputs": frames()}
    index = torch.stack([torch.randperm(16 * 24, generator=torch.Generator().manual_seed(s))[:50].sort().values
                         for s in range(2)])
    with torch.no_grad():
        full = system("optical_flow", batch)  # (B, H*W, 2)
        sampled = system("optical_flow", {**batch, "query_index": index})
    assert full.shape == (2, 16 * 24, 2) and sampled.shape == (2, 50, 2)
    torch.testing.assert_close(sampled, torch.gather(full, 1, index[..., None].expand(-1, -1, 2)), rtol=0, atol=1e-5)


def test_bad_input_is_one_line_naming_the_task_and_what_it_takes(system):
    task = system.task_plugins["optical_flow"]
    with pytest.raises(ValueError, match=r"^task 'optical_flow' takes pairs of RGB frames of shape \(B, 2, 16, 24, 3\)"):
        task.check_batch({"inputs": torch.zeros(2, 3, 16, 24, 3, dtype=torch.uint8)})  # three frames
    with pytest.raises(ValueError, match="two frames of 16 x 24"):
        task.check_batch({"inputs": torch.zeros(2, 2, 20, 24, 3, dtype=torch.uint8)})
    with pytest.raises(ValueError, match=r"^task 'optical_flow' takes two frames of the same size, got \(16, 24, 3\)"):
        task.make_batch(np.zeros((16, 24, 3), np.uint8), np.zeros((16, 20, 3), np.uint8))
    with pytest.raises(ValueError, match="takes two frames"):
        task.make_batch(np.zeros((16, 24, 3), np.uint8))


def test_predictor_turns_two_frames_into_a_flow_field(system):
    pair = frames(1)[0].numpy()
    flow = Predictor.from_system(system).predict("optical_flow", pair[0], pair[1])
    assert flow.shape == (16, 24, 2) and flow.dtype == torch.float32
    with torch.no_grad():
        expected = system("optical_flow", {"inputs": torch.from_numpy(pair)[None]}).reshape(16, 24, 2)
    torch.testing.assert_close(flow, expected)


@pytest.mark.slow
def test_media_shows_frame_truth_and_prediction(system):
    from datamodules.optical_flow import OpticalFlowDataModule

    datamodule = OpticalFlowDataModule(batch_size=2, image_size=(16, 24), val_samples=2)
    datamodule.setup("validate")
    batch = next(iter(datamodule.val_dataloader()))
    task = system.task_plugins["optical_flow"]
    with torch.no_grad():
        media = task.log_media(system("optical_flow", batch), batch)
    pictures = media["flow"].images
    assert len(pictures) == 6 and pictures[1].pixels.shape == (16, 24, 3) and "EPE" in pictures[2].caption


# --- DeepMind's width: per-pixel features unprojected, grid tokens through the speed seam -----------------------


def flow_network(speed, input_channels: int | None = None, size=(6, 8)):
    """The optical_flow plugin as training builds it; by default the encoder takes its features unprojected."""
    from perceiver_mt.config import RunConfig, TaskConfig
    from perceiver_mt.model import EncoderConfig
    from perceiver_mt.plugins import build_network, build_tasks

    options = {"image_size": list(size), "patch_channels": 6, "num_bands": 3, "output_scale": 1.0,
               "query_residual": True}
    features = 6 + 2 * (2 * 3 + 1)  # [projected patches | 2D Fourier]
    config = RunConfig(
        model=EncoderConfig(input_channels=input_channels or features, num_latents=6, latent_channels=16,
                            num_self_attention_heads=2, num_self_attends_per_block=1),
        speed=speed, tasks={"flow": TaskConfig(plugin="optical_flow", options=options)})
    torch.manual_seed(0)
    return build_network(config, build_tasks(config))


def test_unprojected_flow_features_are_grid_tokens_computed_once_and_equal_the_reference():
    """At the encoder's width the pixel features go in unprojected (DeepMind's 322-channel network): the encoder and
    the decoder share one GridTokens object made once per forward; inference (all pixels or a subset) and training
    (a subset, gradients) compute what the reference model computes with the same weights."""
    from perceiver_mt.speed import SpeedConfig
    from perceiver_mt.speed.grid_tokens import GridTokens

    reference, fast = flow_network(SpeedConfig(enabled=False)), flow_network(SpeedConfig())
    fast.load_state_dict(reference.state_dict())
    assert set(fast.state_dict()) == set(reference.state_dict())
    task = fast.tasks["flow"]
    assert task.adapter.projection is None and task.queries.preprocessor is task.adapter.preprocessor
    calls = []
    task.adapter.preprocessor.register_forward_hook(lambda module, args, out: calls.append(out))
    batch = {"inputs": frames(2, (6, 8), seed=3)}
    index = {"query_index": torch.tensor([[0, 5, 17, 47], [2, 3, 40, 41]])}
    fast.eval(), reference.eval()
    with torch.no_grad():
        full = fast("flow", batch)
        assert len(calls) == 1 and isinstance(calls[0], GridTokens)
        assert task.queries(batch) is not calls[0]  # nothing kept once taken: a lone call computes its own
        torch.testing.assert_close(full, reference("flow", batch))
        torch.testing.assert_close(fast("flow", {**batch, **index}), reference("flow", {**batch, **index}))
    fast.train(), reference.train()
    results = {}
    for name, model in (("fast", fast), ("reference", reference)):
        out = model("flow", {**batch, **index})
        results[name] = (out.detach(), torch.autograd.grad(out.square().sum(), list(model.parameters())))
    torch.testing.assert_close(results["fast"][0], results["reference"][0])
    for got, expected in zip(results["fast"][1], results["reference"][1]):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_projected_flow_features_reach_the_decoder_unprojected_and_once():
    """An encoder narrower than the features gets them projected; the queries still take the features themselves,
    computed once per forward, and decode as a lone computation of them would."""
    from perceiver_mt.speed import SpeedConfig

    model = flow_network(SpeedConfig(), input_channels=12).eval()
    task = model.tasks["flow"]
    assert task.adapter.projection is not None and task.decoder.config.query_channels == 20
    calls = []
    task.adapter.preprocessor.register_forward_hook(lambda module, args, out: calls.append(out))
    batch = {"inputs": frames(2, (6, 8), seed=4)}
    with torch.no_grad():
        out = model("flow", batch)
        assert len(calls) == 1
        latents = model.encoder(*task.encode_inputs(batch))
        features = task.adapter.preprocessor(batch["inputs"])  # (B, H * W, 20): the features themselves
        torch.testing.assert_close(out, task.head(task.decoder(features, latents)))
