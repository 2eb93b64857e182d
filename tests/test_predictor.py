"""Inference from any checkpoint a run writes, and one clear line for anything it cannot take."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import distributed_helpers as runs
from helpers import DEBUG_CONFIG
from perceiver_mt.config import load_config
from perceiver_mt.inference import Predictor
from perceiver_mt.system import MultiTaskSystem


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_system(MultiTaskSystem.from_config(load_config(DEBUG_CONFIG, ["logger.kind=none"])))


DIGITS = "task 'digits' takes 8x8 images of intensities 0..16, shaped (B, 8, 8), (B, 64), (8, 8) or (64,); got"
BAD_INPUTS = [
    ("digits", [], "task 'digits' got an empty batch: give at least one input"),
    ("digits", np.zeros((0, 8, 8)), "task 'digits' got an empty batch: give at least one input"),
    ("digits", ["one", "two"], f"{DIGITS} a list holding something other than numbers"),
    ("digits", "an image", f"{DIGITS} a str holding something other than numbers"),
    ("digits", np.full((2, 8, 8), 200), f"{DIGITS} values from 200 to 200"),  # was accepted
    ("digits", np.full((1, 8, 8), -1.0), f"{DIGITS} values from -1 to -1"),
    ("digits", np.full((1, 8, 8), np.nan), f"{DIGITS} NaN or infinite values"),  # was label 0
    ("digits", np.zeros((3, 7, 7)), "task 'digits' takes images of shape (B, 8, 8), got (3, 7, 7)"),
    ("pydoc_mlm", np.zeros((2, 32)), "task 'pydoc_mlm' takes a text or a list of texts (str, '\u2588' marking a "
                                     "masked character), got ndarray"),
    ("pydoc_mlm", [b"bytes"], "task 'pydoc_mlm' takes a text or a list of texts (str, '\u2588' marking a masked "
                              "character), got list"),
    ("pydoc_mlm", [], "task 'pydoc_mlm' got an empty batch: give at least one input"),
    ("pydoc_mlm", "x" * 40, "task 'pydoc_mlm' takes at most 32 bytes per text, got 40"),
    ("nope", [], "unknown task 'nope'; this model has: digits, pydoc_mlm"),
]


@pytest.mark.parametrize("task, raw, message", BAD_INPUTS, ids=[f"{t}-{m.split(';')[-1][:30]}" for t, _, m in BAD_INPUTS])
def test_input_a_task_cannot_take_is_one_line(predictor, task, raw, message):
    with pytest.raises(ValueError) as error:
        predictor.predict(task, raw)
    assert str(error.value) == message


def test_documented_inputs_are_taken(predictor):
    image = np.arange(64).reshape(8, 8) % 17
    assert predictor.predict("digits", image).shape == (1,)  # one image
    assert predictor.predict("digits", image.reshape(1, 64)).shape == (1,)
    assert predictor.predict("digits", np.stack([image] * 3)).shape == (3,)
    assert predictor.predict("pydoc_mlm", "import o\u2588").shape == (1, 32)


@pytest.mark.parametrize("content, message", [
    (b"", "is empty (0 bytes): not a checkpoint"),  # was EOFError with no message
    ("plain", "is not a perceiver-mt training checkpoint (it holds keys weights; expected a file that training "
              "writes to <output_dir>/checkpoints/)"),  # was KeyError 'pytorch-lightning_version'
    ("cut", "is damaged or not a torch.save file (not a complete zip archive)"),
    (None, "does not exist"),
])
def test_checkpoint_that_cannot_be_used_is_one_line(tmp_path, content, message):
    path = tmp_path / "model.ckpt"
    if content == "plain" or content == "cut":
        torch.save({"weights": torch.zeros(1000)}, path)
        if content == "cut":
            path.write_bytes(path.read_bytes()[:2000])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        Predictor.from_checkpoint(path)
    assert str(error.value) == f"checkpoint {str(path)!r} {message}"


def outputs(predictor: Predictor) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 17, (8, 8, 8), generator=generator)
    texts = ["def f(x):\n    ret\u2588rn x", "import o\u2588"]
    return {"digits": predictor.outputs("digits", images), "pydoc_mlm": predictor.outputs("pydoc_mlm", texts)}


@pytest.mark.slow
@pytest.mark.distributed
def test_sharded_fsdp_and_ddp_checkpoints_load_alike():
    """The sharded folder of an FSDP run (one file per rank) and the single file of a DDP run both load into
    one process; each answers like the run it is the same training as."""
    killed, resumed = runs.fsdp_killed_then_resumed()
    resumed.check()
    sharded = killed.output_dir / "checkpoints" / "last.ckpt"
    assert sharded.is_dir()  # was IsADirectoryError
    pairs = [(sharded, runs.fsdp().output_dir), (runs.ddp().output_dir, runs.single_process().output_dir)]
    for checkpoint, reference in pairs:
        checkpoint = checkpoint if checkpoint.name == "last.ckpt" else checkpoint / "checkpoints" / "last.ckpt"
        got = outputs(Predictor.from_checkpoint(checkpoint))
        expected = outputs(Predictor.from_checkpoint(reference / "checkpoints" / "last.ckpt"))
        for task in expected:
            torch.testing.assert_close(got[task], expected[task], rtol=0, atol=1e-4, msg=f"{checkpoint} {task}")
