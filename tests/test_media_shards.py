"""Frame pairs and audio-video windows through real tar shards: written by the shard writer, read back by
the shard DataModule sample for sample, and a short training run of both tasks from those shards."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers import REPO, needs_megamind
from datamodules.webdataset import WebDatasetDataModule
from perceiver_mt.config import load_config
from perceiver_mt.run import build_task_datamodule, train
from perceiver_mt.shards.writer import build_task, write_task

MEDIA_CONFIG = REPO / "configs" / "debug_media.yaml"
TASKS = ["optical_flow", "av_autoencoding"]

pytestmark = [pytest.mark.slow, needs_megamind()]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    config = load_config(MEDIA_CONFIG, ["tasks.optical_flow.data.train_samples=24"])
    folders = {}
    for name in TASKS:
        folders[name] = tmp_path_factory.mktemp(name)
        write_task(config, name, folders[name], shard_size=10)
    return folders


def read_back(task, root: Path, split: str) -> dict[int, dict]:
    datamodule = WebDatasetDataModule(root=str(root), task=task, batch_size=1, shuffle_buffer=0)
    datamodule.trainer = SimpleNamespace(global_rank=0, world_size=1)
    datamodule.setup("fit")
    loader = datamodule.val_dataloader() if split == "val" else datamodule.train_dataloader()
    return {int(batch["index"]): batch for batch in loader}


def assert_same(stored, original) -> None:
    if isinstance(original, dict):
        assert stored.keys() == original.keys()
        for key in original:
            assert_same(stored[key], original[key])
    else:
        assert stored[0].dtype == original.dtype or original.dtype == torch.uint8  # bytes read back widened
        torch.testing.assert_close(stored[0].to(original.dtype), original, rtol=0, atol=0)


@pytest.mark.parametrize("name", TASKS)
def test_shards_hold_exactly_the_samples_of_the_in_memory_split(shards, name):
    config = load_config(MEDIA_CONFIG, ["tasks.optical_flow.data.train_samples=24"])
    task = build_task(config, name)
    memory = build_task_datamodule(name, task, config.tasks[name].data, config.seed)
    memory.setup("fit")
    for split in ("train", "val"):
        stored = read_back(task, shards[name], split)
        dataset = memory.datasets[split]
        originals = {int(dataset[i]["index"]): dataset[i] for i in range(len(dataset))}
        if split == "train":  # one pass of the stream: every stored sample is one of the split's
            assert set(stored) <= set(originals) and stored
        else:
            assert set(stored) == set(originals)
        for index, sample in stored.items():
            assert_same(sample, originals[index])


def test_both_tasks_train_together_from_shards(shards, tmp_path):
    config = load_config(MEDIA_CONFIG, [f"output_dir={tmp_path}", "logger.kind=csv", "trainer.max_steps=6",
                                        "trainer.val_check_interval=6"])
    for name in TASKS:
        config.tasks[name].data = {"name": "webdataset", "root": str(shards[name]), "batch_size": 2}
    metrics = train(config)
    assert metrics["optical_flow"]["val/epe"] > 0 and metrics["optical_flow"]["val/zero_flow_epe"] > 0
    assert {"val/psnr_image", "val/psnr_audio", "val/baseline_psnr_image"} <= set(metrics["av_autoencoding"])


@pytest.mark.parametrize("name", TASKS)
def test_each_task_trains_alone_and_its_checkpoint_predicts(tmp_path, name):
    from perceiver_mt.inference import Predictor

    config = load_config(MEDIA_CONFIG, [f"output_dir={tmp_path}", "logger.kind=csv", "trainer.max_steps=8",
                                        "trainer.val_check_interval=8", "logger.media_every_n_steps=0"])
    config.tasks = {name: config.tasks[name]}
    metrics = train(config)[name]
    assert all(torch.isfinite(torch.tensor(value)) for value in metrics.values()), metrics
    predictor = Predictor.from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    if name == "optical_flow":
        frames = torch.randint(0, 256, (2, 16, 24, 3), dtype=torch.uint8).numpy()
        assert predictor.predict(name, frames[0], frames[1]).shape == (16, 24, 2)
    else:
        rebuilt = predictor.predict(name, torch.zeros(2, 16, 24, 3, dtype=torch.uint8).numpy(), torch.zeros(4004).numpy())
        assert rebuilt["image"].shape == (2, 16, 24, 3)
    media = list((tmp_path / "media").rglob("*.png"))  # the task's pictures from validation, as files
    assert media, f"no media under {tmp_path / 'media'}"
