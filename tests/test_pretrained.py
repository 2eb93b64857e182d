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


@pytest.mark.slow
def test_a_training_checkpoint_exports_to_a_folder_the_predictor_serves_alike(tmp_path):
    """Trained, exported with the command line, served without the training config: the same outputs."""
    from helpers import DEBUG_CONFIG
    from perceiver_mt.config import load_config
    from perceiver_mt.convert.__main__ import main as convert_main
    from perceiver_mt.inference import Predictor
    from perceiver_mt.run import train

    config = load_config(DEBUG_CONFIG, [f"output_dir={tmp_path / 'run'}", "logger.kind=none", "trainer.max_steps=3",
                                        "test=false"])
    train(config)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert convert_main(["checkpoint", str(checkpoint), "--out", str(tmp_path / "exported")]) == 0
    trained, served = Predictor.from_checkpoint(checkpoint), Predictor.from_pretrained(tmp_path / "exported")
    assert served.tasks == trained.tasks == ["digits", "pydoc_mlm"]
    images = torch.rand(4, 8, 8) * 16
    assert torch.equal(served.outputs("digits", images), trained.outputs("digits", images))
    assert torch.equal(served.predict("pydoc_mlm", "def f(x): ret\u2588rn x"),
                       trained.predict("pydoc_mlm", "def f(x): ret\u2588rn x"))


def test_pushing_without_a_token_is_one_line(debug_config, tmp_path, monkeypatch, capsys):
    from perceiver_mt.convert.__main__ import main as convert_main

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login either
    folder = save_pretrained(debug_model(debug_config), debug_config, tmp_path / "saved")
    assert convert_main(["push", str(folder), "--repo", "someone/perceiver"]) == 2
    assert capsys.readouterr().err.strip() == ("error: pushing to the hub needs a token: set HF_TOKEN or run "
                                               "`huggingface-cli login`")


LIGHTNING_BLOCKED = """
import sys
class NoLightning:
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("lightning", "pytorch_lightning"):
            raise ImportError(f"{name} must not be needed to serve a pretrained folder")
sys.meta_path.insert(0, NoLightning())
from perceiver_mt.inference import Predictor
predictor = Predictor.from_pretrained(sys.argv[1])
print(predictor.predict("digits", [[i % 17 for i in range(64)]]).tolist())
"""


@pytest.mark.slow
def test_a_pretrained_folder_is_served_without_lightning(debug_config, tmp_path):
    import subprocess
    import sys

    from perceiver_mt.inference import Predictor

    model = debug_model(debug_config)
    folder = save_pretrained(model, debug_config, tmp_path / "saved")
    result = subprocess.run([sys.executable, "-c", LIGHTNING_BLOCKED, str(folder)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = Predictor.from_pretrained(folder).predict("digits", [[i % 17 for i in range(64)]]).tolist()
    assert result.stdout.strip().splitlines()[-1] == str(expected)
