"""A short real multi-task fit on real data: every task learns, results and checkpoint come out right."""

from __future__ import annotations

import json
import statistics

import lightning as L
import pytest
import torch
from lightning.pytorch import Callback
from sklearn.datasets import load_digits

from helpers import DEBUG_CONFIG
from perceiver_mt.config import RunConfig
from perceiver_mt.inference import Predictor
from perceiver_mt.run import build_datamodule, build_trainer, train
from perceiver_mt.system import MultiTaskSystem


class LossRecorder(Callback):
    """Per-task training losses in step order."""

    def __init__(self) -> None:
        self.losses: dict[str, list[float]] = {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        (task,) = batch  # round robin: one task per step
        self.losses.setdefault(task, []).append(float(outputs["loss"]))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One fit shared by the tests below: 200 steps of the debug config."""
    from perceiver_mt.config import load_config

    output = tmp_path_factory.mktemp("fit")
    config = load_config(DEBUG_CONFIG, [f"output_dir={output}", "logger.kind=csv", "trainer.max_steps=200",
                                         "trainer.val_check_interval=100"])
    L.seed_everything(config.seed, verbose=False)  # as train() does: the fit must not depend on test order
    system = MultiTaskSystem.from_config(config)
    recorder = LossRecorder()
    trainer = build_trainer(config, callbacks=[recorder])
    trainer.fit(system, datamodule=build_datamodule(config, system))
    return config, system, recorder


@pytest.mark.slow
def test_every_task_loss_drops(fitted):
    _, _, recorder = fitted
    assert set(recorder.losses) == {"digits", "pydoc_mlm"}
    for task, losses in recorder.losses.items():
        assert len(losses) == 100, task
        first, last = statistics.mean(losses[:10]), statistics.mean(losses[-10:])
        assert last < 0.9 * first, f"{task}: {first:.3f} -> {last:.3f}"


@pytest.mark.slow
def test_progress_bar_shows_one_loss_per_task(fitted):
    """Not one `train/loss` that alternates between tasks with no label: each task's latest loss, by name."""
    _, system, recorder = fitted
    shown = system.trainer.progress_bar_metrics
    assert {"loss/digits", "loss/pydoc_mlm"} <= set(shown) and "train/loss" not in shown
    for task, losses in recorder.losses.items():
        assert shown[f"loss/{task}"] == pytest.approx(losses[-1], rel=1e-5)


@pytest.mark.slow
def test_checkpoint_round_trip_gives_identical_outputs(fitted):
    config, system, _ = fitted
    checkpoint = f"{config.output_dir}/checkpoints/last.ckpt"
    restored = MultiTaskSystem.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    system.eval()
    images = torch.as_tensor(load_digits().images[:5], dtype=torch.float32) / 16
    byte_ids = torch.randint(0, 257, (3, 32))
    for task, batch in (("digits", {"inputs": images}), ("pydoc_mlm", {"inputs": byte_ids})):
        torch.testing.assert_close(restored(task, batch), system(task, batch), rtol=0, atol=0)
    assert restored.run_config == config


@pytest.mark.slow
def test_inference_by_task_name_on_raw_inputs(fitted):
    config, _, _ = fitted
    predictor = Predictor.from_checkpoint(f"{config.output_dir}/checkpoints/last.ckpt")
    digits = load_digits()
    labels = predictor.predict("digits", digits.images[:200])  # raw 0..16 intensities
    assert labels.shape == (200,)
    assert (labels == torch.as_tensor(digits.target[:200])).float().mean() > 0.3  # trained, if briefly
    filled = predictor.predict("pydoc_mlm", ["The quick brown f\u2588x", "import o\u2588"])
    assert filled.shape == (2, 32) and int(filled.max()) < 256
    with pytest.raises(ValueError, match="unknown task 'nope'; this model has: digits, pydoc_mlm"):
        predictor.predict("nope", [])
    with pytest.raises(ValueError, match=r"takes images of shape \(B, 8, 8\), got \(2, 3, 64\)"):
        predictor.predict("digits", torch.zeros(2, 3, 64))


@pytest.mark.slow
def test_train_writes_per_task_metrics_and_a_checkpoint(debug_config: RunConfig):
    metrics = train(debug_config)
    written = json.loads((debug_config.output_dir and open(f"{debug_config.output_dir}/metrics.json").read()))
    assert written == metrics
    assert set(metrics) == {"digits", "pydoc_mlm"}
    assert {"val/acc", "test/acc", "val/loss", "test/loss"} <= set(metrics["digits"])
    assert {"val/masked_acc", "test/masked_acc", "test/baseline_acc"} <= set(metrics["pydoc_mlm"])
    assert all(0.0 <= v <= 1.0 for t in metrics.values() for k, v in t.items() if k.endswith("acc"))
    logged = open(f"{debug_config.output_dir}/logs/version_0/metrics.csv").readline()
    assert "train/digits/loss_step" in logged and "dataloader_idx" not in logged
