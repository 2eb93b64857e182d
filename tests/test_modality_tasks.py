"""The built-in modality tasks: shapes, one-line errors, inference on raw input, shards, and short real training."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from helpers import DEBUG_CONFIG, REPO, skip_without_modality_data
from perceiver_mt.config import load_config
from perceiver_mt.model import EncoderConfig, MultiTaskPerceiver
from perceiver_mt.registry import load_task
from perceiver_mt.task import TaskInputError
from perceiver_mt.task_checks import install_width_checks
from perceiver_mt.modalities import pad_point_sets

ENCODER = EncoderConfig(input_channels=16, num_latents=8, latent_channels=32, num_self_attends_per_block=1)
TINY = {
    "mnist": {"num_bands": 4, "query_channels": 16, "conv_channels": 8},
    "mnist_points": {"num_bands": 4, "query_channels": 16},
    "mandarin_tones": {"num_bands": 4, "query_channels": 16, "n_mels": 32, "num_samples": 4000},
    "fortunes_language": {"num_bands": 4, "query_channels": 16, "seq_len": 32},
}


def build(plugin: str, **options):
    cls = load_task(plugin)
    task = cls(plugin, cls.options_class(**{**TINY[plugin], **options}), ENCODER)
    torch.manual_seed(0)
    return task, MultiTaskPerceiver(ENCODER, {plugin: task}).eval()


def raw_inputs(plugin: str):
    rng = np.random.default_rng(0)
    if plugin == "mnist":
        return rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    if plugin == "mnist_points":
        return [np.concatenate([rng.uniform(-1, 1, (n, 2)), rng.uniform(0, 1, (n, 1))], axis=1) for n in (40, 12, 90)]
    if plugin == "mandarin_tones":
        return rng.uniform(-0.5, 0.5, (3, 4000)).astype(np.float32)
    return ["Der Hund bellt.", "The dog barks.", "Собака лает."]


@pytest.mark.parametrize("plugin, options, tokens", [
    ("mnist", {"prep": "conv", "conv_channels": 8}, 6 * 6),  # 28 -> conv/2 14 -> pool/2 6
    ("mnist", {"prep": "patches", "patch_size": 2}, 14 * 14),
    ("mandarin_tones", {"frequency_scale": "log", "f_min": 60.0, "f_max": 2000.0, "n_fft": 1024,
                        "frequency_position": False}, 6 * 4),  # 24 frames x 32 bands in 4 x 8 patches
])
def test_task_front_end_variants_map_raw_input_to_class_logits(plugin, options, tokens):
    task, model = build(plugin, **options)
    batch = task.make_batch(raw_inputs(plugin))
    with torch.no_grad():
        logits = model(plugin, batch)
    assert logits.shape == (3, task.num_classes) and torch.isfinite(logits).all()
    assert model.tasks[plugin].adapter.preprocessor.num_tokens == tokens


def test_unknown_mnist_front_end_is_one_line():
    with pytest.raises(ValueError, match="task 'mnist' option prep='vit' is unknown; choose one of patches, conv"):
        build("mnist", prep="vit")


@pytest.mark.parametrize("plugin", list(TINY))
def test_each_task_maps_raw_input_to_class_logits(plugin):
    task, model = build(plugin)
    batch = task.make_batch(raw_inputs(plugin))
    task.check_batch(batch)
    with torch.no_grad():
        logits = model(plugin, batch)
    assert logits.shape == (3, task.num_classes)
    assert task.predict(logits).shape == (3,)
    metrics = task.build_metrics()
    metrics.update(logits, torch.tensor([0, 1, 1]))
    assert abs(float(metrics.compute()["baseline_acc"]) - 2 / 3) < 1e-6
    media = task.log_media(logits, {**batch, "target": torch.tensor([0, 1, 1])})
    assert "confusion_matrix" in media and len(media) >= 2


@pytest.mark.parametrize("plugin,batch,message", [
    ("mnist", {"inputs": torch.zeros(2, 32, 32)}, r"task 'mnist' takes images of shape \(B, 28, 28\).*got \(2, 32, 32\)"),
    ("mandarin_tones", {"inputs": torch.zeros(2, 2, 4000)},
     r"task 'mandarin_tones' takes mono audio of shape \(B, 4000\).*got 2-channel audio"),
    ("mnist_points", {"inputs": {"features": torch.zeros(2, 5, 1), "pad_mask": torch.zeros(2, 5, dtype=torch.bool)}},
     r"task 'mnist_points' takes point sets \{coords: \(B, N, 2\).*\(no coordinates\)"),
    ("fortunes_language", {"inputs": torch.zeros(2, 32)}, r"task 'fortunes_language' takes byte ids of shape \(B, 32\) integers"),
])
def test_wrong_modality_or_shape_is_one_line(plugin, batch, message):
    task, _ = build(plugin)
    with pytest.raises(TaskInputError, match=message) as error:
        task.check_batch(batch)
    assert "\n" not in str(error.value)


def test_an_adapter_or_query_module_of_the_wrong_width_names_its_task():
    task, model = build("mnist", prep="patches", patch_size=4)  # 49 tokens of 16 pixels + 18 Fourier features
    install_width_checks(model.tasks, ENCODER.input_channels)
    batch = task.make_batch(raw_inputs("mnist"))
    model.tasks["mnist"].adapter.projection = torch.nn.Linear(16 + 18, 7)  # 7 channels instead of 16
    with pytest.raises(TaskInputError, match=r"^task 'mnist': its adapter returned \(3, 49, 7\); the shared encoder "
                                             r"\(model.input_channels\) takes \(B, M, 16\)$"):
        model("mnist", batch)
    task, model = build("mnist_points")
    install_width_checks(model.tasks, ENCODER.input_channels)
    model.tasks["mnist_points"].queries.queries = torch.nn.Parameter(torch.zeros(1, 9))
    with pytest.raises(TaskInputError, match=r"task 'mnist_points': its query module returned \(3, 1, 9\); its decoder"):
        model("mnist_points", task.make_batch(raw_inputs("mnist_points")))


def test_point_set_inference_ignores_how_much_padding_a_batch_has():
    task, model = build("mnist_points")
    sets = raw_inputs("mnist_points")
    with torch.no_grad():
        together = model("mnist_points", task.make_batch(sets))
        alone = model("mnist_points", task.make_batch(sets[1:2]))
    torch.testing.assert_close(alone[0], together[1], atol=1e-5, rtol=1e-5)


TRAIN_TASKS = {
    "mnist": {"plugin": "mnist", "options": TINY["mnist"], "data": {"batch_size": 32}},
    "points": {"plugin": "mnist_points", "options": TINY["mnist_points"], "data": {"batch_size": 32}},
    "tones": {"plugin": "mandarin_tones", "options": TINY["mandarin_tones"], "data": {"batch_size": 16}},
    "languages": {"plugin": "fortunes_language", "options": TINY["fortunes_language"], "data": {"batch_size": 16}},
}


def tiny_config(tmp_path, tasks: dict, steps: int, **extra):
    config = OmegaConf.load(DEBUG_CONFIG)
    config.tasks = tasks
    config.trainer.max_steps = steps
    config.trainer.val_check_interval = steps
    config.trainer.limit_val_batches = 2
    config.trainer.limit_test_batches = 4
    config.output_dir = str(tmp_path / "run")
    config.logger = {"kind": "csv", "conflict_every_n_steps": steps // 2, "media_every_n_steps": 0}
    config = OmegaConf.merge(config, extra)
    path = tmp_path / "config.yaml"
    OmegaConf.save(config, path)
    return path



@pytest.mark.slow
def test_all_modality_tasks_train_together_on_real_data(tmp_path):
    """40 steps each (round robin) on the real data: every task's loss falls, metrics and media come out."""
    skip_without_modality_data()
    from perceiver_mt.run import train

    config = load_config(tiny_config(tmp_path, TRAIN_TASKS, 160), ["optim.warmup_steps=10"])
    metrics = train(config)
    assert set(metrics) == set(TRAIN_TASKS)
    for task, row in metrics.items():
        assert 0 <= row["test/baseline_acc"] <= row["test/baseline_acc"] + 1
        assert {"val/acc", "test/acc", "test/loss"} <= set(row), task
    log = open(f"{config.output_dir}/logs/version_0/metrics.csv").read()
    assert "conflict/languages__mnist" in log.splitlines()[0]
    media = {p.name for p in (tmp_path / "run" / "media").rglob("*") if p.is_file()}
    assert {"media_tones_clip_0.wav", "media_points_point_sets.png", "media_mnist_predictions.png",
            "media_languages_predictions.csv"} <= media
    from perceiver_mt.inference import Predictor

    predictor = Predictor.from_checkpoint(f"{config.output_dir}/checkpoints/last.ckpt")
    assert predictor.predict("languages", ["Guten Morgen", "Buenos días"]).shape == (2,)


@pytest.mark.slow
@pytest.mark.parametrize("plugin", ["mnist_points", "fortunes_language"])
def test_shards_of_a_modality_task_read_back_as_its_samples(tmp_path, plugin):
    skip_without_modality_data()
    from datamodules.webdataset import WebDatasetDataModule
    from perceiver_mt.plugins import build_task, build_task_datamodule
    from perceiver_mt.shards.writer import split_samples, write_task

    config = load_config(tiny_config(tmp_path, {"t": {"plugin": plugin, "options": TINY[plugin]}}, 10))
    write_task(config, "t", tmp_path / "shards", shard_size=200, splits=("val",))
    task = build_task(config, "t")
    samples, _ = split_samples(build_task_datamodule("t", task, {}, 0), "val", 0)
    expected = next(iter(samples))
    shards = WebDatasetDataModule(root=str(tmp_path / "shards"), batch_size=4, task=task)
    shards.setup("validate")
    batch = next(iter(shards.val_dataloader()))
    first = {k: (v[0] if torch.is_tensor(v) else {kk: vv[0] for kk, vv in v.items()}) for k, v in batch.items()}
    torch.testing.assert_close(first, expected, check_dtype=False)


@pytest.mark.slow
def test_stereo_files_for_a_mono_task_stop_with_one_line(tmp_path):
    """An audio folder read without mixing down feeds (B, 2, T) batches: train.py says so in one line."""
    soundfile = pytest.importorskip("soundfile")
    rate = 8000
    for name in ("low", "high"):
        (tmp_path / "clips" / name).mkdir(parents=True)
        for i in range(4):
            t = np.arange(rate // 2) / rate
            tone = np.sin(2 * np.pi * (200 if name == "low" else 800) * (1 + i / 10) * t)
            soundfile.write(tmp_path / "clips" / name / f"{i}.wav", np.stack([tone, tone], axis=1), rate)
    config = tiny_config(tmp_path, {"birds": {
        "plugin": "audio_classification",
        "options": {"class_names": ["high", "low"], "sample_rate": rate, "num_samples": 4000, "n_mels": 16,
                    "query_channels": 16, "num_bands": 2, "f_max": 4000.0},
        "data": {"root": str(tmp_path / "clips"), "mono": False, "batch_size": 2, "val_fraction": 0.25,
                 "test_fraction": 0.25}}}, 4)
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "--config", str(config)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1:] == [
        "error: task 'birds' takes mono audio of shape (B, 4000) (0.5 s at 8000 Hz), got 2-channel audio "
        "(2, 2, 4000) float32: mix it down to one channel"]


@pytest.mark.slow
def test_init_from_a_byte_mlm_run_reports_what_it_loaded(tmp_path, caplog):
    skip_without_modality_data()
    from perceiver_mt.run import train

    mlm = load_config(DEBUG_CONFIG, [f"output_dir={tmp_path / 'mlm'}", "logger.kind=none", "trainer.max_steps=4",
                                     "trainer.val_check_interval=4", "test=false"])
    mlm.tasks = {"pydoc_mlm": mlm.tasks["pydoc_mlm"]}
    train(mlm)
    config = load_config(tiny_config(tmp_path, {"languages": TRAIN_TASKS["languages"]}, 4,
                                     init_from=str(tmp_path / "mlm" / "checkpoints" / "last.ckpt"),
                                     init_map={"languages": "pydoc_mlm"}), ["logger.kind=none", "test=false"])
    with caplog.at_level(logging.INFO):
        train(config)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("init_from ")]
    assert len(lines) == 1 and "loaded" in lines[0] and "tasks.languages.adapter" in lines[0]
    assert "new " in lines[0] and "tasks.languages.head" in lines[0] and "languages from pydoc_mlm" in lines[0]
