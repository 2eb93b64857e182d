"""Optical flow and audio-video autoencoding train beside the other tasks: configs/modalities.yaml plus the two
tasks added by dotted overrides (the README's lines, at debug size here), every task logging a training loss and
its evaluation metrics."""

from __future__ import annotations

import csv

import pytest

from helpers import REPO, needs_megamind, skip_without_modality_data
from perceiver_mt.config import load_config

# What the README adds to `python train.py --config configs/modalities.yaml`, at configs/debug_media.yaml's size.
FLOW_OVERRIDES = [
    "tasks.optical_flow.plugin=optical_flow",
    "tasks.optical_flow.options={image_size: [16, 24], patch_channels: 8, num_bands: 4, train_queries: 64, "
    "output_scale: 1.0, query_residual: true}",
    "tasks.optical_flow.data={batch_size: 4, train_samples: 32, val_samples: 4, test_samples: 4}",
]
AV_OVERRIDES = [  # configs/av_autoencoding.yaml's task at debug_media.yaml's size
    "tasks.av_autoencoding.plugin=av_autoencoding",
    "tasks.av_autoencoding.options={frames: 2, image_size: [16, 24], image_bands: 2, audio_bands: 4, "
    "samples_per_patch: 22, output_channels: 16, train_image_queries: 64, train_audio_queries: 32, "
    "decoder_query_gain: 4.0, audio_first_steps: 8}",
    "tasks.av_autoencoding.data={batch_size: 2, train_zoom: 2.0}",
]
DEBUG_SIZE = [  # a small encoder, two steps per task (round robin over eight), one evaluation batch each
    "model.input_channels=16", "model.num_latents=8", "model.latent_channels=32",
    "model.num_self_attention_heads=2", "model.num_self_attends_per_block=1", "model.num_blocks=1",
    "optim.warmup_steps=2", "trainer.max_steps=16", "trainer.val_check_interval=16", "trainer.log_every_n_steps=1",
    "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false", "logger.kind=csv", "logger.conflict_every_n_steps=0",
]
EVALUATION = {"optical_flow": "epe", "pydoc_mlm": "masked_acc", "av_autoencoding": "psnr_audio"}  # others: acc


@pytest.mark.slow
@needs_megamind()
def test_flow_and_audio_video_train_with_the_modalities_config(tmp_path):
    skip_without_modality_data()
    from perceiver_mt.run import train

    config = load_config(REPO / "configs" / "modalities.yaml",
                         [*FLOW_OVERRIDES, *AV_OVERRIDES, *DEBUG_SIZE, f"output_dir={tmp_path / 'run'}",
                          *(f"tasks.{t}.data.batch_size=4" for t in ("digits", "pydoc_mlm", "mnist", "mnist_points",
                                                                      "tones", "languages"))])
    assert len(config.tasks) == 8 and config.tasks["optical_flow"].options["image_size"] == [16, 24]
    metrics = train(config)
    assert set(metrics) == set(config.tasks)
    for task, row in metrics.items():
        metric = EVALUATION.get(task, "acc")
        assert {f"val/{metric}", f"test/{metric}", "test/loss"} <= set(row), (task, sorted(row))
    assert metrics["optical_flow"]["test/epe"] > 0 and metrics["optical_flow"]["test/zero_flow_epe"] > 0
    av = metrics["av_autoencoding"]
    assert all(av[f"test/{kind}_{m}"] > 0 for kind in ("psnr", "baseline_psnr") for m in ("audio", "image"))
    with open(tmp_path / "run" / "logs" / "version_0" / "metrics.csv") as log:
        rows = list(csv.DictReader(log))
    for task in config.tasks:  # a training loss logged for every task
        losses = [r[key] for r in rows for key in (f"train/{task}/loss", f"train/{task}/loss_step") if r.get(key)]
        assert losses and all(float(v) >= 0 for v in losses), task
