"""init_from: the shared encoder and matching task parts load from a checkpoint; one line says what happened."""

from __future__ import annotations

import pytest
import torch

from perceiver_mt.init_from import InitFromError, initialise_from
from perceiver_mt.model import EncoderConfig, MultiTaskPerceiver
from tasks.byte_classification import ByteClassificationOptions, FortunesLanguageTask
from tasks.byte_mlm import ByteMLMOptions, ByteMLMTask

ENCODER = EncoderConfig(input_channels=16, num_latents=4, latent_channels=24, num_self_attends_per_block=1)


def mlm_model(seed: int = 0) -> MultiTaskPerceiver:
    torch.manual_seed(seed)
    task = ByteMLMTask("pydoc_mlm", ByteMLMOptions(seq_len=32, query_channels=8, num_bands=4, query_context=1), ENCODER)
    return MultiTaskPerceiver(ENCODER, {"pydoc_mlm": task})


def language_model(seed: int = 1, seq_len: int = 32) -> MultiTaskPerceiver:
    torch.manual_seed(seed)
    task = FortunesLanguageTask("lang", ByteClassificationOptions(seq_len=seq_len, query_channels=8, num_bands=4), ENCODER)
    return MultiTaskPerceiver(ENCODER, {"lang": task})


@pytest.fixture
def mlm_checkpoint(tmp_path):
    source = mlm_model()
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, path)
    return source, path


def test_encoder_and_renamed_task_parts_load_the_rest_is_new_or_dropped(mlm_checkpoint):
    source, path = mlm_checkpoint
    target = language_model()
    fresh_head = target.tasks["lang"].head[1].weight.clone()
    report = initialise_from(target, path, {"lang": "pydoc_mlm"})
    for name, tensor in source.encoder.state_dict().items():
        assert torch.equal(target.encoder.state_dict()[name], tensor), name
    for part in ("adapter", "decoder"):  # the same ByteAdapter, and a decoder of the same width: loaded
        for name, tensor in getattr(source.tasks["pydoc_mlm"], part).state_dict().items():
            assert torch.equal(getattr(target.tasks["lang"], part).state_dict()[name], tensor), name
    assert torch.equal(target.tasks["lang"].head[1].weight, fresh_head)
    assert {".".join(n.split(".")[:3]) for n in report.loaded} - {"encoder.latents"} <= {
        "tasks.lang.adapter", "tasks.lang.decoder"} | {".".join(n.split(".")[:3]) for n in source.state_dict()
                                                        if n.startswith("encoder.")}
    expected = sum(len(getattr(source.tasks["pydoc_mlm"], p).state_dict()) for p in ("adapter", "decoder"))
    assert len(report.loaded) == len(source.encoder.state_dict()) + expected
    assert {n.split(".")[2] for n in report.new} == {"queries", "head"}  # a learned query and a class head: fresh
    assert {n.split(".")[2] for n in report.dropped} == {"queries", "head"}
    line = report.line()
    assert "\n" not in line and line.startswith(f"init_from {path}: loaded {len(report.loaded)} tensors (encoder ")
    assert "lang from pydoc_mlm" in line and "new " in line and "dropped " in line


def test_without_a_map_only_the_encoder_loads(mlm_checkpoint):
    _, path = mlm_checkpoint
    report = initialise_from(language_model(), path)
    assert {n.split(".")[0] for n in report.loaded} == {"encoder"}
    assert any(n.startswith("tasks.lang.adapter.") for n in report.new)


def test_a_part_of_another_shape_stays_new(mlm_checkpoint):
    _, path = mlm_checkpoint
    target = language_model()
    target.tasks["lang"].adapter.embed = torch.nn.Embedding(300, ENCODER.input_channels)  # another vocabulary
    report = initialise_from(target, path, {"lang": "pydoc_mlm"})
    assert "tasks.lang.adapter.embed.weight" in report.new
    assert "tasks.pydoc_mlm.adapter.embed.weight" in report.dropped


def test_unreadable_sources_are_one_line(tmp_path):
    model = language_model()
    with pytest.raises(InitFromError, match="does not exist"):
        initialise_from(model, tmp_path / "none.ckpt")
    with pytest.raises(InitFromError, match="is a folder but not a pretrained one"):
        initialise_from(model, tmp_path)
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(InitFromError, match="is not a readable checkpoint"):
        initialise_from(model, tmp_path / "text.ckpt")


def test_a_pretrained_folder_loads_like_a_checkpoint(mlm_checkpoint, tmp_path):
    """A folder written by save_pretrained (what the Hugging Face converter writes) is a source too."""
    from perceiver_mt.config import from_dict
    from perceiver_mt.pretrained import save_pretrained

    source, path = mlm_checkpoint
    folder = save_pretrained(source, from_dict({"model": vars(ENCODER), "tasks": {"pydoc_mlm": {
        "plugin": "byte_mlm", "options": {"seq_len": 32, "query_channels": 8, "num_bands": 4, "query_context": 1}}}}),
        tmp_path / "pretrained")
    from_folder, from_file = language_model(), language_model()
    folder_report = initialise_from(from_folder, folder, {"lang": "pydoc_mlm"})
    file_report = initialise_from(from_file, path, {"lang": "pydoc_mlm"})
    assert folder_report.loaded == file_report.loaded and folder_report.new == file_report.new
    for name, tensor in from_file.state_dict().items():
        assert torch.equal(from_folder.state_dict()[name], tensor), name
