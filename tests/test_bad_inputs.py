"""Every mistake in a command is one line naming the key, the value and what is allowed, printed before the
Trainer starts (nothing is written to the output folder), and nothing wrong is silently accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import DEBUG_CONFIG
from perceiver_mt.config import load_config
from perceiver_mt.outputs import earlier_run
from perceiver_mt.system import MultiTaskSystem
from train import main

# (overrides, the start of the one line). Each was a traceback, often after the Trainer had started.
MISTAKES = [
    (["model.num_latents=0"], "error: model.num_latents=0 is not allowed: it must be >= 1"),
    (["model.num_latents=-4"], "error: model.num_latents=-4 is not allowed: it must be >= 1"),
    (["model.latent_channels=0"], "error: model.latent_channels=0 is not allowed: it must be >= 1"),
    (["model.dropout=1.5"], "error: model.dropout=1.5 is not allowed: it must be in [0, 1)"),
    (["model.num_self_attention_heads=3"],
     "error: model.num_self_attention_heads=3 does not divide model.latent_channels=32: each head takes an equal share"),
    (["model.num_cross_attention_heads=3", "model.cross_attention_qk_channels=20"],
     "error: model.num_cross_attention_heads=3 does not divide model.cross_attention_qk_channels=20"),
    (["tasks.digits.data.batch_size=0"], "error: tasks.digits.data: batch_size=0 must be >= 1"),
    (["tasks.digits.data.num_workers=-1"], "error: tasks.digits.data: num_workers=-1 must be >= 0"),
    (["tasks.pydoc_mlm.options.seq_len=0"], "error: tasks.pydoc_mlm.options: seq_len=0 must be >= 1"),
    (["tasks.pydoc_mlm.options.mask_prob=0"], "error: tasks.pydoc_mlm.options: mask_prob=0.0 must be in (0, 1]"),
    (["tasks.digits.options.query_channels=16", "tasks.digits.options.decoder_heads=3"],
     "error: tasks.digits.options (decoder).num_heads=3 does not divide qk_channels=16"),
    (["trainer.max_steps=abc"], "error: bad value for config key 'trainer.max_steps': Value 'abc' of type 'str' could "
                                "not be converted to Integer"),
    (["trainer.max_steps=-5"], "error: trainer.max_steps=-5 is not allowed: a number of steps >= 0, or -1"),
    (["trainer.devices=0"], "error: trainer.devices=0 is not allowed: a number of devices >= 1, -1 (all)"),
    (["trainer.accelerator=tpu"], "error: trainer: "),  # Lightning's own check, as one line
    (["sampling.strategy=weights", "sampling.weights.digits=1", "sampling.weights.pydoc_mlm=1",
      "sampling.weights.nope=1"], "error: sampling.weights.nope names no configured task; tasks: digits, pydoc_mlm"),
    (["sampling.weights.nope=1"],  # was silently ignored unless the strategy was `weights`
     "error: sampling.weights.nope names no configured task; tasks: digits, pydoc_mlm"),
    (["sampling.strategy=weights", "sampling.weights.digits=1"],
     "error: sampling.strategy=weights needs a weight for every task: sampling.weights.pydoc_mlm is not set"),
    (["sampling.strategy=temperature", "sampling.temperature=0"], "error: sampling.temperature=0.0 must be > 0"),
    (["steps_per_epoch=0"], "error: steps_per_epoch=0 must be >= 1"),
    (["parallel.checkpoint_every_n_steps=-1"],
     "error: parallel.checkpoint_every_n_steps=-1 is not allowed: a number of steps >= 1, or 0"),
    (["parallel.timeout_s=0"], "error: parallel.timeout_s must be > 0 seconds"),
    (["sigterm_grace_s=0"], "error: sigterm_grace_s=0.0 must be > 0 seconds"),
    (["ckpt_path=/nonexistent/last.ckpt"], "error: ckpt_path='/nonexistent/last.ckpt' does not exist"),
    (["tasks.digits.data.name=webdataset", "tasks.digits.data.root=/nonexistent"],
     "error: tasks.digits.data: root='/nonexistent' is not a folder"),
    (["logger.kind=tensorboard"], "error: logger.kind='tensorboard' is unknown; choose one of wandb, csv, none"),
]


def run_main(capsys, config: Path, *overrides: str) -> tuple[int, list[str]]:
    code = main(["--config", str(config), *overrides])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize("overrides, message", MISTAKES, ids=[" ".join(o) for o, _ in MISTAKES])
def test_mistake_is_one_line_before_the_trainer_starts(capsys, tmp_path, overrides, message):
    output = tmp_path / "run"
    code, lines = run_main(capsys, DEBUG_CONFIG, f"output_dir={output}", "logger.kind=csv", *overrides)
    assert (code, len(lines)) == (2, 1), lines
    assert lines[0].startswith(message), lines[0]
    assert earlier_run(output) == []  # no logger, checkpoint or metrics: nothing started


@pytest.mark.parametrize("text, message", [
    ("model: {num_latents: [1, 2\n", "is not valid YAML at line 2, column 1: did not find expected ',' or ']'"),
    ("- model\n- tasks\n", "must hold a mapping of keys (seed:, model:, tasks:, ...), not a list"),
    ("42\n", "must hold a mapping of keys (seed:, model:, tasks:, ...), not a single value (Invalid loaded object "
             "type: int)"),
])
def test_config_file_that_is_not_a_mapping_of_keys_is_one_line(capsys, tmp_path, text, message):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    code, lines = run_main(capsys, config)
    assert (code, len(lines)) == (2, 1), lines
    assert lines[0] == f"error: config file {str(config)!r} {message}"


def write_checkpoint_of(config_overrides: list[str], path: Path) -> Path:
    """A checkpoint as Lightning writes it (hyper-parameters and state dict) of the debug model, untrained."""
    system = MultiTaskSystem.from_config(load_config(DEBUG_CONFIG, config_overrides))
    torch.save({"hyper_parameters": dict(system.hparams), "state_dict": system.state_dict(), "global_step": 0,
                "pytorch-lightning_version": "2"}, path)
    return path


@pytest.mark.parametrize("change, message", [
    (["model.num_latents=12"], "(model.encoder.latents is (8, 32) there, (12, 32) here; settings that differ: "
                               "model.num_latents=8 there, 12 here)"),
    (["tasks.digits.options.query_channels=32"], "settings that differ: tasks.digits.options.query_channels=16 "
                                                 "there, 32 here"),
])
def test_resuming_another_network_is_one_line_naming_what_differs(capsys, tmp_path, change, message):
    checkpoint = write_checkpoint_of([], tmp_path / "last.ckpt")
    code, lines = run_main(capsys, DEBUG_CONFIG, f"output_dir={tmp_path / 'run'}", f"ckpt_path={checkpoint}", *change)
    assert (code, len(lines)) == (2, 1), lines
    assert lines[0].startswith(f"error: ckpt_path='{checkpoint}' holds another network than this config builds")
    assert message in lines[0] and lines[0].endswith("or start a new run in another output_dir")


@pytest.mark.parametrize("content, message", [
    (b"", "is empty (0 bytes): not a checkpoint"),
    (b"PK\x03\x04 cut off", "is damaged or not a torch.save file (not a complete zip archive)"),
    ("plain", "is not a perceiver-mt training checkpoint (it holds keys weights;"),
])
def test_unusable_checkpoint_to_resume_is_one_line(capsys, tmp_path, content, message):
    checkpoint = tmp_path / "given.ckpt"
    if content == "plain":
        torch.save({"weights": torch.zeros(3)}, checkpoint)
    else:
        checkpoint.write_bytes(content)
    code, lines = run_main(capsys, DEBUG_CONFIG, f"output_dir={tmp_path / 'run'}", f"ckpt_path={checkpoint}")
    assert (code, len(lines)) == (2, 1), lines
    assert lines[0] == f"error: ckpt_path='{checkpoint}' {message}" or lines[0].startswith(
        f"error: ckpt_path='{checkpoint}' {message}")
