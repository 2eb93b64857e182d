"""Pretrained folders: a model's weights (safetensors) and the resolved config that rebuilds it.

    save_pretrained(model, config, "out/")         # out/model.safetensors + out/config.yaml
    model, config = from_pretrained("out/")        # a MultiTaskPerceiver in eval mode, no Lightning involved

The folder is what `python -m perceiver_mt.convert` writes for Hugging Face checkpoints, what `init_from`
starts training from, and what `Predictor.from_pretrained` serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from perceiver_mt.config import RunConfig, from_dict, to_dict
from perceiver_mt.errors import ConfigError
from perceiver_mt.model.multitask import MultiTaskPerceiver
from perceiver_mt.plugins import build_network, build_tasks

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"


def save_pretrained(model: MultiTaskPerceiver, config: RunConfig | dict[str, Any], folder: str | Path) -> Path:
    """Writes `folder/model.safetensors` (every parameter and persistent buffer) and `folder/config.yaml`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    resolved = to_dict(config if isinstance(config, RunConfig) else from_dict(config))
    # Tensors may share storage (tied weights) or be views: safetensors stores each one on its own.
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    OmegaConf.save(OmegaConf.create(resolved), folder / CONFIG_FILE)
    return folder


def is_pretrained_folder(folder: str | Path) -> bool:
    return all((Path(folder) / name).is_file() for name in (CONFIG_FILE, WEIGHTS_FILE))


def load_pretrained_config(folder: str | Path) -> RunConfig:
    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise ConfigError(f"{str(folder)!r} is not a pretrained folder: it has no {name} "
                              "(write one with `python -m perceiver_mt.convert` or `save_pretrained`)")
    return from_dict(OmegaConf.to_container(OmegaConf.load(folder / CONFIG_FILE), resolve=True))


def load_pretrained_state(folder: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / WEIGHTS_FILE))


def from_pretrained(folder: str | Path, map_location: str | torch.device = "cpu") -> tuple[MultiTaskPerceiver, RunConfig]:
    """The model of a pretrained folder, every parameter loaded (strictly), in eval mode."""
    config = load_pretrained_config(folder)
    model = build_network(config, build_tasks(config))
    load_strictly(model, load_pretrained_state(folder), str(folder))
    return model.to(map_location).eval(), config


def load_strictly(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """`load_state_dict(strict=True)` whose failure is one line naming the first mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and expected[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        if wrong:
            key = wrong[0]
            problem = f"{key} is {tuple(state[key].shape)} there but {tuple(expected[key].shape)} in this model"
        elif missing:
            problem = f"{len(missing)} parameters missing there, e.g. {missing[0]}"
        else:
            problem = f"{len(unexpected)} parameters this model does not have, e.g. {unexpected[0]}"
        raise ConfigError(f"weights in {source} do not fit the model its config builds: {problem}")
    model.load_state_dict(state, strict=True)


def push_to_hub(folder: str | Path, repo: str, private: bool = False) -> str:
    """Uploads a pretrained folder to the Hugging Face hub; returns the repository's URL.

    Needs `huggingface_hub` and a token (HF_TOKEN, or `huggingface-cli login`); without one it fails in one line
    before anything is sent. (Untested against the hub itself: it needs the network.)
    """
    if not is_pretrained_folder(folder):
        raise ConfigError(f"{str(folder)!r} is not a pretrained folder (model.safetensors + config.yaml)")
    try:
        from huggingface_hub import HfApi, get_token
    except ImportError:
        raise ConfigError("pushing to the hub needs huggingface_hub: pip install huggingface_hub") from None
    if get_token() is None:
        raise ConfigError("pushing to the hub needs a token: set HF_TOKEN or run `huggingface-cli login`")
    api = HfApi()
    url = api.create_repo(repo, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="Upload perceiver-mt pretrained folder")
    return str(url)
