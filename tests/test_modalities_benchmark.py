"""benchmarks/modalities.py trains each task alone exactly as in the multi-task config, with its share of steps."""

from __future__ import annotations

import sys

from omegaconf import OmegaConf

from helpers import REPO
from perceiver_mt.config import load_config

sys.path.insert(0, str(REPO))  # benchmarks/ is a folder of scripts, not an installed package

from benchmarks.modalities import CONFIG, HEADLINE, write_config  # noqa: E402


def test_single_task_configs_keep_the_encoder_and_the_task_and_take_its_steps(tmp_path):
    full = OmegaConf.load(CONFIG)
    assert set(HEADLINE) == set(full.tasks)  # every task of the config has its row in the table
    path = write_config(tmp_path / "tones", ["tones"], 250,
                        ["trainer.limit_val_batches=2", "tasks.tones.data.batch_size=8", "tasks.mnist.data.max_shift=0"],
                        {"init_from": "x.ckpt", "init_map": {"tones": "other"}})
    single = load_config(path)
    assert list(single.tasks) == ["tones"]  # another task's override does not bring it back
    assert single.tasks["tones"].data["batch_size"] == 8
    assert single.tasks["tones"].plugin == full.tasks.tones.plugin
    assert single.model == load_config(CONFIG).model
    assert single.trainer["max_steps"] == 250 and single.trainer["val_check_interval"] == 250
    assert single.trainer["limit_val_batches"] == 2 and single.output_dir == str(tmp_path / "tones")
    assert single.init_from == "x.ckpt" and single.init_map == {"tones": "other"}
