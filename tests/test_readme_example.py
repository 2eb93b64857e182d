"""The README's "write your own task" kit example is real code: it builds, runs and rejects wrong sizes."""

from __future__ import annotations

import re

import pytest
import torch

from helpers import REPO
from perceiver_mt.model import EncoderConfig, MultiTaskPerceiver
from perceiver_mt.task import TaskInputError


def readme_example() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("tests/test_readme_example.py"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_kit_example_is_a_working_task_in_a_few_lines():
    code = readme_example()
    assert len(code.splitlines()) <= 60
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    task_class = namespace["TextureTask"]
    encoder = EncoderConfig(input_channels=16, num_latents=4, latent_channels=16, num_self_attends_per_block=1)
    task = task_class("textures", task_class.options_class(query_channels=8), encoder)
    model = MultiTaskPerceiver(encoder, {"textures": task})
    batch = {"inputs": torch.rand(2, 32, 32), "target": torch.tensor([0, 2])}
    task.check_batch(batch)
    logits = model("textures", batch)
    assert logits.shape == (2, 3)
    task.loss(logits, batch).backward()
    with pytest.raises(TaskInputError, match=r"task 'textures' takes images of shape \(B, 32, 32\)"):
        task.check_batch({"inputs": torch.rand(2, 28, 28)})
