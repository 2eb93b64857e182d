"""Folder-per-class data (audio and image folders): files found per class, one-line errors, seeded splits."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.class_folders import find_class_files, split_per_class


def make_tree(root, layout: dict[str, list[str]]) -> None:
    for folder, names in layout.items():
        (root / folder).mkdir(parents=True)
        for name in names:
            (root / folder / name).write_bytes(b"")


def test_files_are_found_per_class_recursively_and_by_extension(tmp_path):
    make_tree(tmp_path, {"owl": ["b.wav", "a.WAV", "notes.txt"], "crow": ["x.flac"], "crow/more": ["y.wav"]})
    files, labels = find_class_files(tmp_path, [], {".wav", ".flac"}, "audio")
    assert [p.relative_to(tmp_path).as_posix() for p in files] == ["crow/more/y.wav", "crow/x.flac", "owl/a.WAV",
                                                                   "owl/b.wav"]
    assert labels.tolist() == [0, 0, 1, 1]  # classes sorted by folder name unless given
    files, labels = find_class_files(tmp_path, ["owl", "crow"], {".wav", ".flac"}, "audio")
    assert labels.tolist() == [0, 0, 1, 1] and files[0].parent.name == "owl"


@pytest.mark.parametrize("classes, extensions, max_classes, message", [
    (["owl", "eagle"], {".wav"}, None, r"audio folder '.*' has no folder for class\(es\) eagle; it has: crow, owl"),
    ([], {".mp3"}, None, r"no audio files under '.*' \(looked for .mp3\)"),
    ([], {".wav"}, 1, r"audio folder '.*' has 2 classes but the task takes 1"),
])
def test_mistakes_are_one_line(tmp_path, classes, extensions, max_classes, message):
    make_tree(tmp_path, {"owl": ["a.wav"], "crow": ["b.wav"]})
    with pytest.raises(ValueError, match=message):
        find_class_files(tmp_path, classes, extensions, "audio", max_classes)
    with pytest.raises(FileNotFoundError, match=r"image folder '.*nowhere' does not exist \(set data.root\)"):
        find_class_files(tmp_path / "nowhere", [], extensions, "image")


def test_every_class_is_split_in_the_same_proportions_reproducibly():
    labels = np.repeat([0, 1, 2], [20, 40, 60])
    splits = split_per_class(labels, {"val": 0.25, "test": 0.25}, seed=3)
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(120))
    for split, share in (("val", 0.25), ("test", 0.25), ("train", 0.5)):
        assert np.bincount(labels[splits[split]]).tolist() == [int(20 * share), int(40 * share), int(60 * share)]
    again = split_per_class(labels, {"val": 0.25, "test": 0.25}, seed=3)
    assert all(np.array_equal(splits[s], again[s]) for s in splits)
