"""Pretrained folders: save_pretrained / from_pretrained round trip, and one-line refusals."""

from __future__ import annotations

import pytest
import torch

from perceiver_mt.errors import ConfigError
from perceiver_mt.plugins import build_network, build_tasks
from perceiver_mt.pretrained import CONFIG_FILE, from_pretrained, save_pretrained


def debug_model(config):
    torch.manual_seed(0)
    return build_network(config, build_tasks(config)).eval()


def test_round_trip_gives_the_same_outputs(debug_config, tmp_path):
    model = debug_model(debug_config)
    folder = save_pretrained(model, debug_config, tmp_path / "saved")
    loaded, config = from_pretrained(folder)
    assert config.model == debug_config.model and set(config.tasks) == set(debug_config.tasks)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    digits = {"inputs": torch.rand(3, 8, 8)}
    text = {"inputs": torch.randint(0, 256, (2, 32))}
    with torch.no_grad():
        assert torch.equal(loaded("digits", digits), model("digits", digits))
        assert torch.equal(loaded("pydoc_mlm", text), model("pydoc_mlm", text))


def test_a_folder_without_weights_is_one_line(tmp_path):
    (tmp_path / CONFIG_FILE).write_text("seed: 0\n")
    with pytest.raises(ConfigError, match=r"is not a pretrained folder: it has no model.safetensors"):
        from_pretrained(tmp_path)


def test_weights_of_another_shape_are_one_line(debug_config, tmp_path):
    folder = save_pretrained(debug_model(debug_config), debug_config, tmp_path / "saved")
    text = (folder / CONFIG_FILE).read_text().replace("num_latents: 8", "num_latents: 9")
    (folder / CONFIG_FILE).write_text(text)
    with pytest.raises(ConfigError, match=r"do not fit the model its config builds: encoder.latents is \(8, 32\) "
                                          r"there but \(9, 32\) in this model"):
        from_pretrained(folder)
