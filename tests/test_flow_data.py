"""Flow pairs: the generator's flow checked by an independent warp (scipy's map_coordinates), the real
scenes read from scikit-image and opencv-doc, and the metrics on flows whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates

from datamodules.flow_scenes import (
    HELDOUT_PHOTOS, OPENCV_SAMPLES, MotionRange, TRAIN_PHOTOS, graf_pair, heldout_pairs, motorcycle_pair, pixel_grid, render_pair,
)
from datamodules.optical_flow import OpticalFlowDataModule
from tasks.flow_metrics import EndPointError, ZeroFlowEndPointError, end_point_error, farneback_flow, flow_to_rgb

SIZE = (48, 64)


def smooth_photo(size: int = 400) -> np.ndarray:
    """A photo of slow sinusoids: bilinear sampling of it is exact to well under one grey level."""
    y, x = np.mgrid[0:size, 0:size] / size
    channels = [np.sin(2 * np.pi * (4.3 * x + 2.7 * y)), np.cos(2 * np.pi * (3.6 * x - 4.1 * y)), np.sin(25 * x * y)]
    return np.stack([(127.5 + 120 * c) for c in channels], axis=-1).round().astype(np.uint8)


def warp_back(frame2: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """frame2 sampled at p + flow(p) for every pixel p (bilinear): frame 1 where the flow is right."""
    destination = pixel_grid(flow.shape[:2]) + flow
    return np.stack([map_coordinates(frame2[..., c].astype(float), [destination[..., 1], destination[..., 0]], order=1)
                     for c in range(3)], axis=-1)


def photometric_error(frames: np.ndarray, flow: np.ndarray, valid: np.ndarray) -> float:
    return float(np.abs(warp_back(frames[1], flow) - frames[0].astype(float)).mean(-1)[valid].mean())


def test_generated_flow_moves_frame_one_onto_frame_two():
    for seed in range(3):
        pair = render_pair([smooth_photo()], SIZE, np.random.default_rng(seed), num_objects=0)
        errors = np.abs(warp_back(pair.frames[1], pair.flow) - pair.frames[0]).max(-1)
        assert pair.valid.mean() > 0.5
        assert errors[pair.valid].max() <= 2.0  # rounding to uint8 and bilinear sampling only
        shifted = np.abs(warp_back(pair.frames[1], pair.flow + [0.5, 0]) - pair.frames[0]).max(-1)
        assert shifted[pair.valid].mean() > 3 * errors[pair.valid].mean()


def test_valid_means_the_pixel_lands_inside_frame_two():
    pair = render_pair([smooth_photo()], SIZE, np.random.default_rng(7), num_objects=0)
    destination = pixel_grid(SIZE) + pair.flow
    inside = ((destination >= 0) & (destination <= np.array(SIZE[::-1]) - 1)).all(-1)
    np.testing.assert_array_equal(pair.valid, inside)
    assert not inside.all()  # this draw moves some pixels out


def test_objects_move_on_their_own_and_still_warp_exactly():
    pair = render_pair([smooth_photo(), 255 - smooth_photo()], SIZE, np.random.default_rng(3), num_objects=2,
                       object_area=(0.15, 0.25))
    magnitudes = np.linalg.norm(pair.flow[pair.valid], axis=-1)
    assert magnitudes.std() > 0.3  # not a single global motion
    errors = np.abs(warp_back(pair.frames[1], pair.flow) - pair.frames[0]).max(-1)[pair.valid]
    # Background pixels hidden behind an object in frame 2 keep their true flow (FlyingChairs does the
    # same) but see the object there; everything else matches.
    assert np.median(errors) <= 1.5 and np.mean(errors <= 2.0) > 0.7


def test_training_pairs_are_seeded_and_new_every_epoch():
    datamodule = OpticalFlowDataModule(image_size=SIZE, train_samples=4, val_samples=2, test_samples=2,
                                       train_queries=100, seed=5)
    datamodule.setup("fit")
    train = datamodule.datasets["train"]
    first = train[1]
    torch.testing.assert_close(train[1], first)
    assert first["query_index"].shape == (100,) and first["query_index"].unique().numel() == 100
    train.set_epoch(1)
    assert not torch.equal(train[1]["inputs"], first["inputs"])
    assert set(TRAIN_PHOTOS).isdisjoint(HELDOUT_PHOTOS)
    val = datamodule.datasets["val"]
    np.testing.assert_array_equal(val[0]["target"].numpy(), heldout_pairs(1, SIZE, 1001)[0].flow)
    assert "query_index" not in val[0]


def test_motorcycle_truth_is_leftward_disparity_that_aligns_the_real_pair():
    pair = motorcycle_pair((64, 96))
    assert pair.frames.shape == (2, 64, 96, 3) and pair.frames.dtype == np.uint8
    assert 0.6 < pair.valid.mean() < 0.95  # Middlebury leaves occlusions without truth
    dx = pair.flow[..., 0][pair.valid]
    scale = 96 / 741
    assert np.all(pair.flow[..., 1] == 0) and 7.19 * scale * 0.95 < -dx.max() and -dx.min() < 59.91 * scale * 1.05
    zero = np.zeros_like(pair.flow)
    assert photometric_error(pair.frames, pair.flow, pair.valid) < 0.6 * photometric_error(pair.frames, zero, pair.valid)


def test_graf_homography_flow_aligns_the_real_pair():
    if not (OPENCV_SAMPLES / "graf1.png").is_file():
        pytest.skip("Debian opencv-doc is not installed (apt-get install opencv-doc): no graf pair")
    pair = graf_pair((64, 80))
    assert pair.valid.mean() > 0.8 and np.linalg.norm(pair.flow, axis=-1).mean() > 5
    zero = np.zeros_like(pair.flow)
    assert photometric_error(pair.frames, pair.flow, pair.valid) < 0.6 * photometric_error(pair.frames, zero, pair.valid)


def test_end_point_error_on_known_flows():
    target = torch.zeros(2, 4, 5, 2)
    target[..., 0] = 1.0  # every pixel moves one to the right
    valid = torch.ones(2, 4, 5, dtype=torch.bool)
    valid[1, :2] = False  # 10 pixels without truth
    preds = target + torch.tensor([3.0, 4.0])  # off by a 3-4-5 triangle
    preds[1, :2] = 100.0  # wrong where nothing is known: must not count
    epe, zero = EndPointError(), ZeroFlowEndPointError()
    epe.update(preds, target, valid)
    zero.update(preds, target, valid)
    assert epe.compute().item() == pytest.approx(5.0)
    assert zero.compute().item() == pytest.approx(1.0)
    assert end_point_error(preds.numpy(), target.numpy(), valid.numpy()) == pytest.approx(5.0)


def test_farneback_recovers_a_translation_and_the_colour_wheel_shows_direction():
    shift = MotionRange(translation=3.0, rotation=0.0, scale=0.0, shear=0.0, perspective=0.0)
    pair = render_pair(["astronaut"], SIZE, np.random.default_rng(0), shift, num_objects=0)
    farneback = farneback_flow(pair.frames)
    assert end_point_error(farneback, pair.flow, pair.valid) < 0.5 * end_point_error(0 * farneback, pair.flow, pair.valid)
    right, down = np.zeros((1, 2, 2), np.float32), np.zeros((1, 2, 2), np.float32)
    right[0, 0], down[0, 0] = (2, 0), (0, 2)
    r, d = flow_to_rgb(right), flow_to_rgb(down)
    assert tuple(r[0, 0]) == (255, 0, 0) and tuple(r[0, 1]) == (0, 0, 0)  # rightward: red at full speed; still: black
    assert d[0, 0, 0] < 255 and d[0, 0].max() == 255  # downward: another hue
