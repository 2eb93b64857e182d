"""Training-time zoom of the Megamind windows: one crop per window between the whole frame and 1/zoom of each
side, resized to the window's size; evaluation windows untouched."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.megamind import MegamindDataModule, random_zoom

from helpers import needs_megamind


def ramp_frames() -> np.ndarray:
    """Two 96 x 128 frames whose red channel is the column, green the row, blue the frame's number."""
    rows, columns = np.mgrid[0:96, 0:128]
    frames = np.zeros((2, 96, 128, 3), np.uint8)
    frames[..., 0], frames[..., 1] = columns, rows
    frames[1, ..., 2] = 200
    return frames


def test_zoom_one_is_the_whole_frame_resized():
    cv2 = pytest.importorskip("cv2")
    frames = ramp_frames()
    zoomed = random_zoom(frames, (48, 64), 1.0, np.random.default_rng(0))
    expected = np.stack([cv2.resize(f, (64, 48), interpolation=cv2.INTER_AREA) for f in frames])
    np.testing.assert_array_equal(zoomed, expected)


def test_zoom_crops_between_the_whole_frame_and_one_over_zoom_of_each_side_the_same_for_every_frame():
    pytest.importorskip("cv2")
    frames = ramp_frames()
    widths = []
    for seed in range(200):
        zoomed = random_zoom(frames, (48, 64), 2.0, np.random.default_rng(seed)).astype(int)
        assert zoomed.shape == (2, 48, 64, 3)
        np.testing.assert_array_equal(zoomed[1, ..., :2], zoomed[0, ..., :2])  # one crop for the window
        columns, rows = zoomed[0, ..., 0], zoomed[0, ..., 1]
        width, height = columns.max() - columns.min() + 1, rows.max() - rows.min() + 1
        assert 64 - 2 <= width <= 128 and 48 - 2 <= height <= 96  # between half of each side and all of it
        assert width / 128 == pytest.approx(height / 96, abs=0.05)  # the frame's shape is kept
        widths.append(width)
    assert min(widths) < 70 and max(widths) > 120  # the whole range is drawn


def test_a_zoom_below_one_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^megamind: train_zoom=0.5 must be at least 1") as error:
        MegamindDataModule(train_zoom=0.5)
    assert "\n" not in str(error.value)


@needs_megamind()
@pytest.mark.slow
def test_zoom_changes_training_windows_by_epoch_and_leaves_evaluation_windows_as_they_were():
    plain = MegamindDataModule(frames=2, train_image_queries=10, train_audio_queries=2, samples_per_patch=154)
    zoomed = MegamindDataModule(frames=2, train_image_queries=10, train_audio_queries=2, samples_per_patch=154,
                                train_zoom=2.0)
    plain.setup("fit")
    zoomed.setup("fit")
    for split in ("val", "test"):
        for i in (0, len(plain.datasets[split]) - 1):
            np.testing.assert_array_equal(zoomed.datasets[split][i]["inputs"]["image"].numpy(),
                                          plain.datasets[split][i]["inputs"]["image"].numpy())
    train = zoomed.datasets["train"]
    first = train[40]
    assert first["inputs"]["image"].shape == plain.datasets["train"][40]["inputs"]["image"].shape
    np.testing.assert_array_equal(first["inputs"]["audio"].numpy(),
                                  plain.datasets["train"][40]["inputs"]["audio"].numpy())  # audio untouched
    np.testing.assert_array_equal(train[40]["inputs"]["image"].numpy(), first["inputs"]["image"].numpy())
    train.set_epoch(1)
    assert not np.array_equal(train[40]["inputs"]["image"].numpy(), first["inputs"]["image"].numpy())
