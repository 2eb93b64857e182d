"""The optical-flow and audio-video tasks under DDP and FSDP on 2 CPU processes (gloo): the same training
as one process with the same global batch, step for step (see test_ddp.py for why that holds)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import distributed_helpers as runs
from distributed_helpers import assert_same_parameters, assert_same_training
from helpers import REPO, needs_megamind

MEDIA_CONFIG = REPO / "configs" / "debug_media.yaml"

pytestmark = [pytest.mark.distributed, pytest.mark.slow,
              needs_megamind()]


def per_rank_batch(scale: int) -> list[str]:
    """debug_media.yaml's batch sizes times `scale`."""
    return [f"tasks.optical_flow.data.batch_size={2 * scale}", f"tasks.av_autoencoding.data.batch_size={2 * scale}"]


def media_run(name: str, overrides: list[str]) -> runs.Run:
    def launch(output_dir: Path) -> runs.Run:
        command = [sys.executable, str(runs.RECORD_RUN), "--config", str(MEDIA_CONFIG), f"output_dir={output_dir}",
                   *runs.COMMON, *overrides]
        return runs.Run(**vars(runs.run_command(command, output_dir, timeout=400))).check()

    return runs.cached(f"media_{name}", launch)


def single() -> runs.Run:
    return media_run("single", ["trainer.devices=1", *per_rank_batch(2)])


def test_media_tasks_train_under_ddp_exactly_like_one_process():
    ddp = media_run("ddp", ["trainer.devices=2", "trainer.strategy=ddp", *per_rank_batch(1)])
    assert_same_training(ddp, single())
    assert_same_parameters(ddp, single())
    assert {task for row in ddp.records(0) for task in row["tasks"]} == {"optical_flow", "av_autoencoding"}


def test_media_tasks_train_under_fsdp_exactly_like_one_process():
    fsdp = media_run("fsdp", ["trainer.devices=2", "trainer.strategy=fsdp", "parallel.checkpoint=full",
                              *per_rank_batch(1)])
    assert_same_training(fsdp, single())
    assert_same_parameters(fsdp, single())
