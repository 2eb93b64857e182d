"""Configuration: YAML + overrides into typed dataclasses; every mistake is one line naming the key."""

from __future__ import annotations

import pytest

from perceiver_mt.config import ConfigError, load_config
from train import main

from helpers import DEBUG_CONFIG


def run_main(capsys, *overrides: str) -> tuple[int, list[str]]:
    code = main(["--config", str(DEBUG_CONFIG), *overrides])
    return code, capsys.readouterr().err.strip().splitlines()


def test_overrides_are_typed_and_applied():
    config = load_config(DEBUG_CONFIG, ["model.num_latents=12", "optim.lr=0.5", "tasks.digits.loss_weight=2"])
    assert config.model.num_latents == 12 and config.optim.lr == 0.5
    assert config.tasks["digits"].loss_weight == 2.0
    assert config.trainer["max_steps"] == 20  # from the YAML file


@pytest.mark.parametrize("override,message", [
    ("model.num_latent=3", "error: unknown config key 'model.num_latent' (valid: input_channels, num_latents,"),
    ("modle.x=1", "error: unknown config key 'modle' (valid: seed, output_dir, model,"),
    ("model.num_latents=many", "error: bad value for config key 'model.num_latents': Value 'many' of type 'str' could not be converted to Integer"),
    ("tasks.digits.plugin=digitz", "error: unknown perceiver_mt.tasks plugin 'digitz'; registered: "),
    ("tasks.digits.options.num_band=3", "error: unknown config key 'tasks.digits.options.num_band' (valid: num_bands,"),
    ("tasks.digits.data.batch=3", "error: unknown config key 'tasks.digits.data.batch' (valid: batch_size,"),
    ("tasks.digits.data.batch_size=big", "error: bad value for config key 'tasks.digits.data.batch_size'"),
    ("tasks.digits.data.name=nope", "error: unknown perceiver_mt.datamodules plugin 'nope'; registered: "),
    ("trainer.max_step=3", "error: unknown config key 'trainer.max_step' (valid: accelerator, strategy,"),
    ("tasks.new_task.loss_weight=2", "error: tasks.new_task.plugin is not set: name a registered task plugin"),
    ("sampling.strategy=sometimes", "error: sampling.strategy='sometimes' is unknown; choose one of round_robin,"),
    ("speed.attention_kernel=flash", "error: speed.attention_kernel='flash' is unknown; choose one of auto, fused, matmul"),
    ("speed.input_chunk_size=0", "error: speed.input_chunk_size must be a positive number of points or null, got 0"),
    ("parallel.compile=always", "error: parallel.compile='always' is unknown; choose one of none, latent_layers, encoder"),
    ("model.attention_kernel=fused", "error: config key 'model.attention_kernel' (in an override) moved to 'speed.attention_kernel'"),
    ("no_equals_sign", "error: override 'no_equals_sign' must look like dotted.key=value"),
])
def test_mistakes_give_one_line_errors(capsys, tmp_path, override, message):
    code, lines = run_main(capsys, f"output_dir={tmp_path}", override)
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith(message), lines[0]


def test_missing_config_file_is_explained(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_configs_saved_before_the_speed_section_load_with_their_keys_moved():
    """Checkpoints keep their run config as hyperparameters; older ones have the model.* speed keys."""
    from perceiver_mt.config import from_dict, to_dict

    saved = to_dict(load_config(DEBUG_CONFIG))
    del saved["speed"]
    saved["model"].update(input_chunk_size=64, attention_kernel="fused", activation_checkpointing=True)
    config = from_dict(saved)
    assert (config.speed.input_chunk_size, config.speed.attention_kernel) == (64, "fused")
    assert config.parallel.activation_checkpointing
