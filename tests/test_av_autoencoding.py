"""Audio-video autoencoding: Megamind.avi decoded for real, windows that keep evaluation unseen, PSNR
against a direct computation, subsampled decoding equal to full decoding, one-line errors, prediction."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from datamodules.megamind import CLIP, SAMPLE_RATE, MegamindDataModule, load_clip, window_starts
from perceiver_mt.config import load_config
from perceiver_mt.inference import Predictor
from perceiver_mt.system import MultiTaskSystem
from tasks.av_parts import MeanPredictionPSNR, ReconstructionPSNR

from helpers import REPO, needs_megamind


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> MultiTaskSystem:
    torch.manual_seed(0)
    config = load_config(REPO / "configs" / "debug_media.yaml",
                         [f"output_dir={tmp_path_factory.mktemp('run')}", "logger.kind=none"])
    return MultiTaskSystem.from_config(config).eval()


def window(batch: int = 2, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"inputs": {"audio": torch.randn(batch, 2 * 2002, generator=generator) * 0.05,
                       "image": torch.randint(0, 256, (batch, 2, 16, 24, 3), generator=generator, dtype=torch.uint8)}}


@needs_megamind()
@pytest.mark.slow
def test_megamind_decodes_video_and_audio_on_one_timeline():
    clip = load_clip(CLIP, (48, 64))
    assert clip.video.shape == (270, 48, 64, 3) and clip.video.dtype == np.uint8
    assert clip.fps == pytest.approx(23.976, abs=1e-3)
    assert len(clip.audio) == round(270 * SAMPLE_RATE / clip.fps)  # 11.26 s: the length of the video
    assert 0.01 < clip.audio[SAMPLE_RATE:].std() < 0.1  # real sound, not silence or clipping
    starts = {split: window_starts(clip, split, 8, 2) for split in ("train", "val", "test")}
    assert max(starts["train"]) + 8 <= 216 <= min(starts["val"])  # training never sees the last 20%
    assert max(starts["val"]) + 8 <= min(starts["test"]) and max(starts["test"]) + 8 <= 270
    datamodule = MegamindDataModule(frames=8, train_image_queries=100, train_audio_queries=10)
    datamodule.setup("fit")
    sample = datamodule.datasets["train"][5]
    assert sample["inputs"]["image"].shape == (8, 48, 64, 3) and sample["inputs"]["audio"].shape == (8 * 2002,)
    np.testing.assert_array_equal(sample["inputs"]["audio"].numpy(), clip.audio[round(5 * 2002.002):][:16016])
    assert sample["query_index"]["image"].shape == (100,) and sample["query_index"]["audio"].shape == (10,)
    assert "query_index" not in datamodule.datasets["val"][0]


def test_psnr_metrics_match_a_direct_computation():
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(4, 50, 3, generator=generator)
    preds = target + 0.1 * torch.randn(4, 50, 3, generator=generator)
    psnr, baseline = ReconstructionPSNR(), MeanPredictionPSNR(channels=3)
    for part in range(2):  # two batches: states accumulate
        psnr.update(preds[2 * part:2 * part + 2], target[2 * part:2 * part + 2])
        baseline.update(preds[2 * part:2 * part + 2], target[2 * part:2 * part + 2])
    mse = ((preds - target) ** 2).mean().item()
    assert psnr.compute().item() == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)
    constant = target.reshape(-1, 3).mean(0)  # the best constant per channel
    assert baseline.compute().item() == pytest.approx(10 * math.log10(1 / ((target - constant) ** 2).mean().item()),
                                                      rel=1e-5)


def test_outputs_are_one_tensor_per_modality_through_a_shared_and_a_per_modality_linear(system):
    with torch.no_grad():
        outputs = system("av_autoencoding", window())
    audio_queries = 2 * 2002 // 22
    assert outputs["audio"].shape == (2, audio_queries, 22) and outputs["image"].shape == (2, 2 * 16 * 24, 3)
    task = system.task_plugins["av_autoencoding"]
    assert task.query_channels == max(2 * 4 + 1, 3 * (2 * 2 + 1)) + 2  # widest Fourier features + 2 padding


def test_subsampled_decoding_equals_full_decoding(system):
    batch = window()
    task = system.task_plugins["av_autoencoding"]
    generator = torch.Generator().manual_seed(1)
    index = {m: torch.stack([torch.randperm(task.num_queries[m], generator=generator)[:task.train_queries[m]].sort().values
                             for _ in range(2)]) for m in ("audio", "image")}
    with torch.no_grad():
        full = system("av_autoencoding", batch)
        sampled = system("av_autoencoding", {**batch, "query_index": index})
    for m in ("audio", "image"):
        expected = torch.gather(full[m], 1, index[m][..., None].expand(-1, -1, full[m].shape[-1]))
        torch.testing.assert_close(sampled[m], expected, rtol=0, atol=1e-5)


def test_loss_is_each_modalitys_unexplained_variance(system):
    task = system.task_plugins["av_autoencoding"]
    batch = window()
    truth = {m: task.decoded_truth(batch, m) for m in ("audio", "image")}
    perfect = task.loss(truth, batch)
    means = {m: truth[m].mean(dim=(1, 2), keepdim=True).expand_as(truth[m]) for m in truth}  # each window's mean
    assert perfect.item() == pytest.approx(0.0, abs=1e-6)
    # Mean prediction: 1 per modality, less where a window's variance is under the floor (min_variance).
    floor = task.options.min_variance
    expected = sum(float((v / v.clamp_min(floor)).mean()) for v in (truth[m].var(dim=(1, 2), correction=0) for m in truth))
    assert task.loss(means, batch).item() == pytest.approx(expected, rel=1e-4)
    assert expected > 1.0
    # Per window: the loss of a batch is the mean of its windows' losses (what DDP's averaging reproduces).
    windows = [{"inputs": {m: x[i:i + 1] for m, x in batch["inputs"].items()}} for i in range(2)]
    assert task.loss(means, batch).item() == pytest.approx(
        sum(task.loss({m: means[m][i:i + 1] for m in means}, windows[i]).item() for i in range(2)) / 2, rel=1e-5)


def test_bad_input_is_one_line_naming_the_task_and_what_it_takes(system):
    task = system.task_plugins["av_autoencoding"]
    batch = window()
    odd = {"inputs": {**batch["inputs"], "image": batch["inputs"]["image"][:, :1]}}
    with pytest.raises(ValueError, match=r"^task 'av_autoencoding' takes windows of 2 frames .*got 1$"):
        task.check_batch(odd)
    resized = {"inputs": {**batch["inputs"], "image": torch.zeros(2, 2, 16, 20, 3, dtype=torch.uint8)}}
    with pytest.raises(ValueError, match=r"^task 'av_autoencoding' takes video of shape \(B, 2, 16, 24, 3\)"):
        task.check_batch(resized)
    with pytest.raises(ValueError, match=r"^task 'av_autoencoding' takes frames of one size, got \(16, 24, 3\) and "
                                         r"\(16, 20, 3\)$"):
        task.make_batch([np.zeros((16, 24, 3), np.uint8), np.zeros((16, 20, 3), np.uint8)], np.zeros(4004, np.float32))
    resampled = {"inputs": {**batch["inputs"], "audio": torch.zeros(2, 2 * 1839)}}  # 44.1 kHz
    with pytest.raises(ValueError, match=r"takes mono audio at 48000 Hz, 2002 samples per frame: \(B, 4004\)"):
        task.check_batch(resampled)
    with pytest.raises(ValueError, match=r"^task 'av_autoencoding' takes audio at 48000 Hz, got 44100 Hz"):
        task.make_batch(np.zeros((2, 16, 24, 3), np.uint8), np.zeros(4004, np.float32), sample_rate=44100)
    with pytest.raises(ValueError, match=r"takes inputs \{'audio', 'image'\}"):
        task.check_batch({"inputs": {"image": batch["inputs"]["image"]}})
    with pytest.raises(ValueError, match=r"decodes 64 image queries per training window"):
        task.check_batch({**batch, "query_index": {"audio": torch.zeros(2, 32, dtype=torch.long),
                                                   "image": torch.zeros(2, 10, dtype=torch.long)}})


def test_predictor_reconstructs_both_modalities_and_media_shows_them(system):
    inputs = window(1)["inputs"]
    rebuilt = Predictor.from_system(system).predict("av_autoencoding", inputs["image"][0].numpy(),
                                                    inputs["audio"][0].numpy())
    assert rebuilt["image"].shape == (2, 16, 24, 3) and rebuilt["image"].dtype == torch.uint8
    assert rebuilt["audio"].shape == (4004,)
    task = system.task_plugins["av_autoencoding"]
    batch = window(2)
    with torch.no_grad():
        media = task.log_media(system("av_autoencoding", batch), batch)
    assert len(media["frames"].images) == 4 and media["audio_rebuilt"].sample_rate == 48000
    assert media["audio_rebuilt"].samples.shape == (4004,)


def test_audio_first_steps_weigh_the_video_loss_zero_until_that_step(system, monkeypatch):
    task = system.task_plugins["av_autoencoding"]
    monkeypatch.setattr(task, "options", dataclasses.replace(task.options, audio_first_steps=5))
    batch = window()
    truth = {m: task.decoded_truth(batch, m) for m in ("audio", "image")}
    wrong_video = {"audio": truth["audio"], "image": truth["image"] + 0.5}
    monkeypatch.setattr(task, "step", 4)
    assert task.loss(wrong_video, batch).item() == pytest.approx(0.0, abs=1e-6)
    monkeypatch.setattr(task, "step", 5)
    assert task.loss(wrong_video, batch).item() > 1.0


@needs_megamind()
@pytest.mark.slow
def test_training_tells_the_task_each_step_it_trains(tmp_path, monkeypatch):
    from perceiver_mt.run import train
    from tasks.av_autoencoding import AVAutoencodingTask

    seen: list[int] = []
    original = AVAutoencodingTask.loss

    def recording_loss(self, outputs, batch):
        if self.options.audio_first_steps == 3:  # only the run below sets this
            seen.append(self.step)
        return original(self, outputs, batch)

    monkeypatch.setattr(AVAutoencodingTask, "loss", recording_loss)
    config = load_config(REPO / "configs" / "debug_media.yaml",
                         [f"output_dir={tmp_path}", "logger.kind=none", "trainer.max_steps=4", "trainer.limit_val_batches=0",
                          "tasks.av_autoencoding.options.audio_first_steps=3"])
    config.tasks = {"av_autoencoding": config.tasks["av_autoencoding"]}
    train(config)
    assert seen[:4] == [0, 1, 2, 3]


@needs_megamind()
@pytest.mark.slow
def test_a_short_training_run_on_the_clip_lowers_the_loss_of_both_modalities(tmp_path):
    from perceiver_mt.run import train

    config = load_config(REPO / "configs" / "debug_media.yaml",
                         [f"output_dir={tmp_path}", "logger.kind=csv", "trainer.max_steps=30",
                          "trainer.val_check_interval=30", "logger.media_every_n_steps=0"])
    config.tasks = {"av_autoencoding": config.tasks["av_autoencoding"]}
    metrics = train(config)["av_autoencoding"]
    for modality in ("audio", "image"):
        assert math.isfinite(metrics[f"val/psnr_{modality}"]) and math.isfinite(metrics[f"val/baseline_psnr_{modality}"])
    # After 30 steps the reconstruction is no worse than 1 dB under predicting the mean everywhere (an untrained
    # model's outputs are far off the data's scale: tens of dB under).
    assert metrics["val/psnr_image"] > metrics["val/baseline_psnr_image"] - 1.0, metrics
